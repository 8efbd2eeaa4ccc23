"""An answer's text in pieces while it is decoded (`AnswerText`, `StreamingSession.ask(on_text=...)`):
the pieces concatenate to exactly the answer's text, for byte-level BPE pieces that split
multi-byte characters and for a tokenizer that cleans up spaces; streaming changes no token;
a callback that raises stops the decoding and leaves the stream unchanged."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from stc.integrations.engine.prompt import AnswerText
from stc.integrations.engine.session import StreamingSession
from tests.families import FAMILIES, engine_frames

UNICODE_TEXT = "  Le café est à 5 € ; 東京の駅 🎉🎉 naïve façade, ok .  "


def _byte_level_bpe() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few lines (small merges: multi-byte characters
    stay split over several tokens)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<end>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["Le café est à 5 euros.", "the station of Tokyo", "ok ok ok"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<end>")


def _pieces(tokenizer, ids, ends=frozenset()):
    text = AnswerText(tokenizer, set(ends))
    pieces = [text.push(t) for t in ids]
    final = tokenizer.decode([t for t in ids[: next((i for i, t in enumerate(ids) if t in ends), len(ids))]],
                             skip_special_tokens=True).strip()
    return pieces, text.finish(final), final


def test_byte_level_pieces_never_split_a_character_and_add_up_to_the_text():
    tokenizer = _byte_level_bpe()
    ids = tokenizer(UNICODE_TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(UNICODE_TEXT.encode()) // 3  # characters of several bytes are split over tokens
    pieces, rest, final = _pieces(tokenizer, ids)
    assert final == UNICODE_TEXT.strip()
    assert "".join(pieces) + rest == final
    assert all("\ufffd" not in piece for piece in pieces)
    assert sum(1 for piece in pieces if piece) > 10  # pieces come as decoded, not all at the end
    assert not pieces[-1].endswith(" ")  # trailing whitespace is held back (the text is stripped)


def test_pieces_stop_at_the_first_end_token():
    tokenizer = _byte_level_bpe()
    end = tokenizer.convert_tokens_to_ids("<end>")
    ids = tokenizer("ok café", add_special_tokens=False)["input_ids"]
    more = tokenizer(" est", add_special_tokens=False)["input_ids"]
    pieces, rest, final = _pieces(tokenizer, ids + [end] + more, ends={end})
    assert final == "ok café" and "".join(pieces) + rest == final


def test_a_tokenizer_that_cleans_up_spaces_gives_pieces_that_add_up_to_its_text():
    words = ["<end>", "do", "n't", "stop", ".", "it", "'s", "ok", "?"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<end>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<end>", clean_up_tokenization_spaces=True)
    ids = [words.index(w) for w in "do n't stop . it 's ok ?".split()]
    pieces, rest, final = _pieces(fast, ids)
    assert final == "don't stop. it's ok?"  # the clean-up rewrote the space before "n't", ".", "'s", "?"
    assert "".join(pieces) + rest == final and any(pieces)


@pytest.fixture(scope="module", params=["llava_onevision", "qwen3_5"])
def family_model(request):
    family = FAMILIES[request.param]
    return family, family.build()


def _session(family, model):
    session = StreamingSession(model, family.processor(), n_local=100000, topk=1000, vit_batch=family.frames_per_block)
    session.append_frames(engine_frames(family, 2 * family.frames_per_block, seed=3))
    return session


QUESTIONS = ["what is in the video ?", "how many red ?", "what colour is the scene ?"]


def test_streamed_pieces_concatenate_to_the_answer_and_change_no_token(family_model):
    family, model = family_model
    with _session(family, model) as session:
        for question in QUESTIONS:
            plain = session.ask(question, max_new_tokens=12)
            pieces = []
            streamed = session.ask(question, max_new_tokens=12, on_text=pieces.append)
            assert streamed.token_ids == plain.token_ids and streamed.retrieved == plain.retrieved
            assert "".join(pieces) == plain.text == streamed.text
            assert all(pieces)


class _Stop(Exception):
    pass


def test_a_callback_that_raises_stops_decoding_and_leaves_the_stream_unchanged(family_model):
    family, model = family_model
    with _session(family, model) as session:
        pieces = []
        before = session.ask(QUESTIONS[0], max_new_tokens=12, on_text=pieces.append)
        assert len(pieces) >= 3  # the answer comes in several pieces: stopping after two cuts it short
        passes = []
        run = session.driver.run
        session.driver.run = lambda *args, **kwargs: passes.append(1) or run(*args, **kwargs)
        seen = []

        def stop_after_two(piece):
            seen.append(piece)
            if len(seen) == 2:
                raise _Stop()

        with pytest.raises(_Stop):
            session.ask(QUESTIONS[0], max_new_tokens=12, on_text=stop_after_two)
        stopped_passes = len(passes)
        after = session.ask(QUESTIONS[0], max_new_tokens=12)
        del session.driver.run
    assert seen == pieces[:2]
    assert stopped_passes < len(passes) - stopped_passes  # the stopped answer ran fewer LLM passes
    assert after.token_ids == before.token_ids and after.text == before.text
