"""One test battery for every supported model family (the table in tests/families.py), tiny
configs in float64: exactness when STC is switched off, exact unpatching, per-instance patching,
the Cacher at update_ratio 1.0 (extra features such as DeepStack taps included), a pruned
prefill against a hand-built reference, and the streaming engine against offline generate."""

import inspect

import pytest
import torch

import stc
from stc.api import state_of
from stc.config import PRUNER_SCORINGS
from stc.integrations.adapters.patching import KeptSequence, mask_positions
from stc.integrations.engine.session import StreamingSession
from tests.families import FAMILIES, engine_frames
from tests.tiny import random_frames

EXACT = stc.STCConfig(cache_interval=1, keep_ratio=1.0)
QUESTION = "what is in the video ?"


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return FAMILIES[request.param]


@pytest.fixture
def model(family):
    return family.build()


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def greedy(model, inputs, n=5):
    return model.generate(**inputs, max_new_tokens=n, do_sample=False)


def hooks(model):
    return {name: list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values()) for name, m in model.named_modules()}


def test_exact_config_gives_identical_logits_and_tokens_and_unpatch_restores(model, family):
    inputs = family.inputs(frames=5)
    ref_logits, ref_tokens = logits(model, inputs), greedy(model, inputs)
    stc.patch(model, EXACT)
    assert torch.equal(logits(model, inputs), ref_logits)
    assert torch.equal(greedy(model, inputs), ref_tokens)
    stc.unpatch(model)
    assert torch.equal(logits(model, inputs), ref_logits)
    assert torch.equal(greedy(model, inputs), ref_tokens)


def test_unpatch_after_compression_restores_exactly(model, family):
    inputs = family.inputs(frames=6, smooth=True)
    ref, before = logits(model, inputs), hooks(model)
    signature = inspect.signature(model.forward)
    stc.patch(model, stc.STCConfig(cache_interval=2, update_ratio=0.25, keep_ratio=0.5))
    assert inspect.signature(model.forward) == signature  # generate routes kwargs by signature
    greedy(model, inputs, n=3)
    stc.unpatch(model)
    assert torch.equal(logits(model, inputs), ref)
    assert hooks(model) == before
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert "generate" not in model.__dict__ and "get_video_features" not in model.model.__dict__


def test_patching_is_per_instance_and_idempotent(model, family):
    other = family.build()
    inputs = family.inputs(frames=4)
    ref = logits(other, inputs)
    stc.patch(model, stc.STCConfig(keep_ratio=0.5))
    count = sum(map(len, hooks(model).values()))
    stc.patch(model, stc.STCConfig(keep_ratio=0.25))
    assert sum(map(len, hooks(model).values())) == count
    assert stc.config_of(model).keep_ratio == 0.25
    assert type(model).generate is type(other).generate and "generate" not in other.__dict__
    assert torch.equal(logits(other, inputs), ref)


def test_full_update_ratio_reproduces_the_dense_vit_and_its_extra_features(model, family):
    inputs = family.inputs(frames=8, smooth=True)
    dense = family.vit_outputs(model, inputs)
    stc.patch(model, stc.STCConfig(cache_interval=3, update_ratio=1.0, pruner=False, cut_threshold=None))
    cached = family.vit_outputs(model, inputs)
    blocks = 8 // family.frames_per_block
    assert (stc.stats(model)["frames"], stc.stats(model)["reference_frames"]) == (blocks, -(-blocks // 3))
    assert len(cached) == len(dense)
    for got, want in zip(cached, dense):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_partial_update_changes_the_extra_features_with_the_main_ones(model, family):
    """The extra features (DeepStack taps) come from the cached blocks: reuse changes them too."""
    inputs = family.inputs(frames=8, smooth=True)
    dense = family.vit_outputs(model, inputs)
    stc.patch(model, stc.STCConfig(cache_interval=4, update_ratio=0.25, pruner=False, cut_threshold=None))
    cached = family.vit_outputs(model, inputs)
    for got, want in zip(cached, dense):
        assert not torch.allclose(got, want)


@pytest.mark.parametrize("scoring", PRUNER_SCORINGS)
def test_pruned_prefill_matches_hand_built_reference(model, family, scoring):
    inputs = family.inputs(frames=7, smooth=True)
    expected, columns = family.hand_pruned(model, inputs, 0.5, scoring, 0.4)
    stc.patch(model, stc.STCConfig(cacher=False, keep_ratio=0.5, alpha=0.4, pruner_scoring=scoring))
    got = logits(model, inputs)
    assert torch.equal(state_of(model).call.keep_mask[0].nonzero().flatten(), columns)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_the_hooks_of_a_call_share_one_declared_object_that_the_next_video_call_replaces(model, family):
    """STCState holds config, streams, stats, timer and the call; the adapter's hooks write only
    the VideoCall's declared fields, and a new video pass starts a fresh one."""
    inputs = family.inputs(frames=6, smooth=True)
    stc.patch(model, stc.STCConfig(cache_interval=2, update_ratio=0.5, keep_ratio=0.5))
    greedy(model, inputs, n=2)
    state = state_of(model)
    assert set(vars(state)) == {"config", "streaming", "streams", "stats", "timer", "call"}
    first = state.call
    assert not first.encoding and first.plan is None and first.token_merging is None  # the pass is over
    assert first.recomputed and first.kept and first.keep_mask is not None
    with pytest.raises(AttributeError):
        first.undeclared = 1
    logits(model, inputs)
    assert state.call is not first and state.call.keep_mask is not None


def test_the_kept_sequence_left_pads_shorter_rows_and_gathers_every_sequence_tensor():
    keep = torch.tensor([[True, False, True, True], [False, True, False, True]])
    sequence = KeptSequence(keep)
    ids = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    assert sequence.length == 3 and sequence.padded
    assert sequence.gather(ids, -1).tolist() == [[10, 12, 13], [-1, 21, 23]]
    rows = torch.stack([ids, ids + 100])  # [rows, B, L], as mRoPE position rows
    assert sequence.gather(rows).tolist() == [[[10, 12, 13], [0, 21, 23]], [[110, 112, 113], [0, 121, 123]]]
    even = KeptSequence(torch.tensor([[True, False, True], [False, True, True]]))
    assert not even.padded and even.gather(ids[:, :3]).tolist() == [[10, 12], [21, 22]]
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert mask_positions(mask, 2, 3, "cpu").tolist() == [[0, 0, 1], [0, 1, 2]]
    assert mask_positions(None, 2, 3, "cpu").tolist() == [[0, 1, 2], [0, 1, 2]]


def test_pruned_generate_returns_the_full_prompt(model, family):
    inputs = family.inputs(frames=4, smooth=True)
    stc.patch(model, stc.STCConfig())
    out = greedy(model, inputs, n=3)
    ids = inputs["input_ids"]
    assert out.shape == (1, ids.shape[1] + 3) and torch.equal(out[:, : ids.shape[1]], ids)
    s = stc.stats(model)  # the Pruner keeps round(n * 0.3) tokens of each frame (each slice for Qwen)
    assert s["llm_tokens_kept_per_frame"] == round(s["llm_tokens_in"] / s["frames"] * 0.3) > 0


def test_engine_with_full_window_and_topk_equals_offline_generate(model, family):
    """Chunked ingestion, a question in between (which must leave the stream unchanged, recurrent
    state included), then a question over the whole stream = offline generate."""
    frames = engine_frames(family, 8)
    with StreamingSession(model, family.processor(), n_local=100000, topk=1000) as session:
        session.append_frames(frames[:2])
        session.ask("how many ?", max_new_tokens=3)
        session.append_frames(frames[2:])
        answer = session.ask(QUESTION, max_new_tokens=6)
        expected = family.offline(model, session, frames, QUESTION, 6)
        eos = session.eos_ids  # the engine also stops at the chat template's end token
    assert answer.token_ids == expected[: len(answer.token_ids)]
    assert len(answer.token_ids) == 6 or answer.token_ids[-1] in eos
    assert answer.retrieved[0] == list(range(8 // family.frames_per_block))


def test_engine_with_stc_prunes_blocks_and_reports_kept_positions(model, family):
    frames = engine_frames(family, 8, seed=3)
    config = stc.STCConfig(cache_interval=2, update_ratio=0.25, keep_ratio=0.5)
    with StreamingSession(model, family.processor(), config=config, n_local=100000, topk=1000) as session:
        report = session.append_frames(frames)
        blocks = 8 // family.frames_per_block
        assert len(report.kept) == blocks == len(session.store)
        assert report.tokens_kept == sum(len(k) for k in report.kept) == blocks * round(report.tokens_in / blocks * 0.5)
        assert stc.stats(model)["reference_frames"] >= blocks // 2
        assert session.ask(QUESTION, max_new_tokens=2).retrieved[0] == list(range(blocks))


def _tensors(value) -> list:
    if isinstance(value, torch.Tensor):
        return [value.clone()]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else []
    return [t for item in items for t in _tensors(item)]


def _state_tensors(session):
    """The stream's ingestion state: the sink and window K/V of each layer, and the recurrent
    state of linear-attention layers (Qwen3.5: a convolution window and a state matrix each)."""
    recurrent = _tensors([vars(layer) for layer in getattr(session.driver.recurrent, "layers", [])])
    return [t.clone() for kv in session.kv.layers for t in kv.tensors()] + recurrent, recurrent


def test_a_question_with_retrieval_leaves_the_stream_state_unchanged(model, family):
    frames = engine_frames(family, 8, seed=5)
    with StreamingSession(model, family.processor(), n_local=8, topk=1) as session:  # the retrieval pass runs
        session.append_frames(frames)
        before, recurrent = _state_tensors(session)
        with torch.inference_mode():  # the retrieval pass alone (as ask runs it), then the whole question
            session.retriever.retrieve(QUESTION, since=None)
        assert all(torch.equal(a, b) for a, b in zip(before, _state_tensors(session)[0]))
        first = session.ask(QUESTION, max_new_tokens=4)
        after = _state_tensors(session)[0]
        assert len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))
        assert session.ask(QUESTION, max_new_tokens=4).token_ids == first.token_ids
        hybrid = family.model_type.startswith("qwen3_5")
        assert (session.driver.recurrent is not None) == hybrid == any(t.ndim == 4 for t in recurrent)
        assert session.memory()["recurrent_state_bytes"] == sum(t.numel() * t.element_size() for t in recurrent)


def test_qwen3_frames_keep_one_size_whatever_the_chunk_length():
    """Qwen3-VL's video processor sizes frames by the clip's length; the engine must not: every
    chunk of a stream gets the same frame size, from the processor's own settings."""
    family = FAMILIES["qwen3_vl"]
    model = family.build()

    class VideoProcessor:  # the settings of a Qwen3VLVideoProcessor (which needs torchvision)
        patch_size, merge_size, temporal_patch_size = 4, 2, 2
        size = {"shortest_edge": 8 * 8, "longest_edge": 32 * 32 * 64}
        max_video_tokens = 16
        image_mean = image_std = (0.5, 0.5, 0.5)

        def __call__(self, *args, **kwargs):
            raise AssertionError("the engine does not call Qwen3-VL's video processor")

    class Processor:
        video_processor = VideoProcessor()

    adapter = stc.api.adapter_for(model)
    grids = [adapter.preprocess(model, Processor(), random_frames(count, size=48, seed=count))[1].tolist()
             for count in (2, 16)]
    assert grids == [[[1, 8, 8]], [[8, 8, 8]]]  # 48 px frames shrink to 16 merged tokens (of 8 px) per slice


def test_a_saved_checkpoint_folder_streams_like_the_model_it_came_from(family, tmp_path):
    """`load_checkpoint` on a folder written by save_pretrained (no torchvision here: the
    fallback processor) keeps the frame preprocessing, and the loaded model gives the same blocks
    and answer as the original. (Both sessions use the loaded processor: in a Qwen3.5 folder the
    test's word-level tokenizer reloads as transformers' Qwen3_5Tokenizer, which splits words
    its own way.)"""
    from stc.integrations.loading import load_checkpoint

    model, processor = family.build().float(), family.processor()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_checkpoint(tmp_path)
    assert loaded.config.model_type == family.model_type
    assert loaded_processor.frames == processor.frames
    frames = engine_frames(family, 4)
    answers = []
    for m in (model, loaded):
        with StreamingSession(m, loaded_processor, n_local=1000, topk=4) as session:
            session.append_frames(frames)
            answers.append((len(session.store), session.ask(QUESTION, max_new_tokens=3).token_ids))
    assert answers[0] == answers[1] and answers[0][0] == 4 // family.frames_per_block
