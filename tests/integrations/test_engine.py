"""The ReKV-style streaming engine on a tiny LLaVA-OneVision."""

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

import stc
from stc.integrations.engine.attention import sliding_mask
from stc.integrations.engine.session import StreamingSession
from stc.eval.presets import VIDEO_TOKEN
from tests.tiny import random_frames, tiny_llava

QUESTION = "what is in the video ?"
EXACT = dict(n_local=100000, topk=1000)


def offline_tokens(llava, processor, session, frames, question, n):
    """Greedy tokens of plain generate over [header][all frames' tokens][prompt]."""
    pixels = processor.frames(frames)[None].to(llava.dtype)
    with torch.no_grad():
        features = llava.model.get_video_features(pixels, return_dict=True).pooler_output[:, :-1]
    ids = session.template.header_ids() + [VIDEO_TOKEN] * features.shape[1] + session.template.prompt_ids(question)
    out = llava.generate(
        input_ids=torch.tensor([ids]),
        mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=features)},
        max_new_tokens=n,
        do_sample=False,
    )
    return out[0, len(ids) :].tolist()


def test_full_window_and_topk_reproduce_offline_generate(llava, processor):
    frames = random_frames(6)
    with StreamingSession(llava, processor, **EXACT) as session:
        session.append_frames(frames[:2])
        session.append_frames(frames[2:])
        answer = session.ask(QUESTION, max_new_tokens=6)
        expected = offline_tokens(llava, processor, session, frames, QUESTION, 6)
        assert session.memory()["vit_reference_bytes"] == 0  # dense: no Cacher
    assert answer.token_ids == expected
    assert answer.frames_seen == 6
    assert answer.retrieved[0] == list(range(6))


def test_interleaved_questions_do_not_change_the_stream(llava, processor):
    frames = random_frames(6, seed=1)
    with StreamingSession(llava, processor, **EXACT) as session:
        session.append_frames(frames[:3])
        session.ask("what colour is the video ?", max_new_tokens=4)
        session.append_frames(frames[3:])
        second = session.ask(QUESTION, max_new_tokens=5)
    with StreamingSession(llava, processor, **EXACT) as fresh:
        fresh.append_frames(frames)
        expected = fresh.ask(QUESTION, max_new_tokens=5)
    assert second.token_ids == expected.token_ids


def test_min_new_tokens_decodes_past_the_end_token_but_the_answer_ends_there(llava, processor):
    with StreamingSession(llava, processor, **EXACT) as session:
        session.append_frames(random_frames(3, seed=2))
        free = session.ask(QUESTION, max_new_tokens=6)
        session.eos_ids = {free.token_ids[0]}  # make the first token an end token
        stopped = session.ask(QUESTION, max_new_tokens=6)
        forced = session.ask(QUESTION, max_new_tokens=6, min_new_tokens=6)
        with pytest.raises(ValueError, match="min_new_tokens"):
            session.ask(QUESTION, max_new_tokens=2, min_new_tokens=3)
    assert stopped.token_ids == free.token_ids[:1] and stopped.text == ""
    assert len(forced.token_ids) == 6 and forced.token_ids[: len(free.token_ids)] == free.token_ids
    assert forced.text == ""  # the answer ends at the end token even though decoding went on


def test_sliding_mask_matches_the_spec():
    mask = sliding_mask(queries=3, sink=2, window=4, n_local=3, device="cpu")
    for i in range(3):
        for j in range(2 + 4 + 3):
            if j < 2:
                expected = True  # the sink is always visible
            else:
                token, query = j - 2, 4 + i
                expected = query - 3 < token <= query
            assert bool(mask[i, j]) == expected, (i, j)


def test_window_holds_the_last_n_local_tokens(llava, processor):
    frames = random_frames(5, seed=2)
    with StreamingSession(llava, processor, n_local=6, topk=2) as session:
        session.append_frames(frames)
        assert session.memory()["window_tokens"] == 6
        for layer in range(session.driver.num_layers):
            keys, _ = session.store.fetch(layer, [3, 4], torch.device("cpu"))  # 4 tokens per frame
            torch.testing.assert_close(session.kv.layer(layer).win_k, keys[:, -6:], rtol=0, atol=0)


def test_retrieved_blocks_follow_the_hand_computed_scores(llava, processor):
    frames = random_frames(5, seed=3)
    queries = {}

    def record(layer):
        def hook(module, args, output):
            queries.setdefault(layer, output)  # the first call after clear(): the retrieval pass

        return hook

    hooks = [
        layer.self_attn.q_proj.register_forward_hook(record(i))
        for i, layer in enumerate(llava.model.language_model.layers)
    ]
    with StreamingSession(llava, processor, n_local=6, topk=2) as session:
        session.append_frames(frames)
        queries.clear()  # keep only the question's retrieval pass
        answer = session.ask(QUESTION, max_new_tokens=1)
        config = llava.config.text_config
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        head_dim = config.hidden_size // heads
        for layer in range(session.driver.num_layers):
            q = queries[layer][0].view(-1, heads, head_dim).mean(0)  # un-rotated mean query [H, D]
            scores = []
            for block in range(5):
                keys, _ = session.store.fetch(layer, [block], torch.device("cpu"))
                rep = keys.mean(1)  # [H_kv, D]
                scores.append(sum(float(q[h] @ rep[h // (heads // kv_heads)]) for h in range(heads)))
            expected = sorted(np.argsort(scores)[::-1][:2].tolist())
            assert answer.retrieved[layer] == expected
        assert answer.context_tokens == session.sink_tokens + 2 * 4
    for hook in hooks:
        hook.remove()


def test_since_limits_retrieval_to_recent_frames(llava, processor):
    with StreamingSession(llava, processor, n_local=8, topk=3) as session:
        session.append_frames(random_frames(8, seed=4), timestamps=np.arange(8) * 2.0)
        answer = session.ask(QUESTION, max_new_tokens=1, since=9.0)
        for layer, ids in answer.retrieved.items():
            assert all(session.timestamps[i] >= 9.0 for i in ids)
            assert len(ids) == 3


def test_long_stream_keeps_device_memory_bounded_and_blocks_linear(processor):
    model = tiny_llava(dtype=torch.float32)
    frames = random_frames(100, seed=5)
    with StreamingSession(model, processor, n_local=32, topk=8, vit_batch=100) as session:
        windows, blocks = [], []
        for _ in range(20):  # 2,000 frames
            session.append_frames(frames)
            memory = session.memory()
            windows.append(memory["window_bytes"])
            blocks.append(memory["block_bytes"])
        per_frame = 2 * 2 * 2 * 4 * 8 * 4  # layers * (K, V) * kv heads * tokens * head dim * fp32
        assert session.frames_seen == 2000
        assert len(set(windows)) == 1  # sink + 32-token window, whatever the length
        assert blocks == [per_frame * 100 * (i + 1) for i in range(20)]
        assert session.ask(QUESTION, max_new_tokens=2).retrieved[0].__len__() == 8


def test_stc_inside_the_engine_shrinks_blocks_and_reuses_vit(llava, processor):
    frames = random_frames(6, seed=6)
    config = stc.STCConfig(cache_interval=2, update_ratio=0.25, keep_ratio=0.5)
    with StreamingSession(llava, processor, config=config, **EXACT) as session:
        report = session.append_frames(frames[:3])
        session.append_frames(frames[3:])
        stats = stc.stats(llava)
        assert (report.tokens_in, report.tokens_kept) == (12, 6)
        assert stats["frames"] == 6 and stats["reference_frames"] == 3  # the Cacher spans calls
        assert session.memory()["block_bytes_per_frame"] == 2 * 2 * 2 * 2 * 8 * 8
        vision = llava.config.vision_config
        tokens = (vision.image_size // vision.patch_size) ** 2
        # one reference per layer: unit keys, values, and the attention + MLP branches
        per_layer = 3 * tokens * vision.hidden_size * llava.dtype.itemsize
        assert session.memory()["vit_reference_bytes"] == vision.num_hidden_layers * per_layer
        answer = session.ask(QUESTION, max_new_tokens=2)
        assert answer.retrieved[0] == list(range(6))
        assert answer.context_tokens == len(session.template.header_ids()) + 6 * 2  # the kept tokens only
        assert len(answer.token_ids) == 2 and answer.text
        assert answer.text == session.tokenizer.decode(answer.token_ids, skip_special_tokens=True).strip()
    assert not stc.is_patched(llava)


def test_the_session_uses_the_adapter_that_patch_installed(llava, processor):
    """One adapter instance per patched model: the session's, whether it patched the model or
    found it patched, is the one stc.patch installed (its hooks and the engine share its state)."""
    with StreamingSession(llava, processor, **EXACT) as session:
        assert session.adapter is stc.api.adapter_of(llava)
    stc.patch(llava, stc.STCConfig.off())
    installed = stc.api.adapter_of(llava)
    with StreamingSession(llava, processor, **EXACT) as session:
        assert session.adapter is installed
    assert stc.api.adapter_of(llava) is installed
    stc.unpatch(llava)
    with pytest.raises(ValueError, match="not patched"):
        stc.api.adapter_of(llava)


def test_reset_starts_a_new_stream(llava, processor):
    frames = random_frames(4, seed=7)
    with StreamingSession(llava, processor, **EXACT) as session:
        session.append_frames(frames)
        first = session.ask(QUESTION, max_new_tokens=3)
        session.append_frames(random_frames(3, seed=8))
        session.reset()
        assert session.frames_seen == 0 and len(session.store) == 0
        session.append_frames(frames)
        assert session.ask(QUESTION, max_new_tokens=3).token_ids == first.token_ids


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_local": 0}, "n_local"), ({"topk": -1}, "topk"), ({"sample_fps": 0}, "sample_fps"), ({"config": {}}, "STCConfig")],
)
def test_invalid_parameters(llava, processor, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        StreamingSession(llava, processor, **kwargs)


def test_bad_frames_and_timestamps_are_clear_errors(llava, processor):
    with StreamingSession(llava, processor) as session:
        with pytest.raises(ValueError, match="uint8"):
            session.append_frames(np.zeros((2, 28, 28, 3), dtype=np.float32))
        with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
            session.append_frames(np.zeros((2, 3, 28, 28), dtype=np.uint8))
        session.append_frames(random_frames(2), timestamps=[5.0, 6.0])
        with pytest.raises(ValueError, match="back in time"):
            session.append_frames(random_frames(1), timestamps=[1.0])
        with pytest.raises(ValueError, match="timestamps"):
            session.append_frames(random_frames(2), timestamps=[7.0])
        with pytest.raises(ValueError, match="question"):
            session.ask("  ")
        assert session.frames_seen == 2  # failed calls lost nothing and added nothing


def stored_blocks(session) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ids = list(range(len(session.store)))
    return [session.store.fetch(layer, ids, torch.device("cpu")) for layer in range(session.driver.num_layers)]


@pytest.mark.parametrize("config", [None, stc.STCConfig(cache_interval=2, keep_ratio=0.5)], ids=["dense", "stc"])
def test_pipelined_ingestion_stores_the_same_blocks_and_answers_the_same(llava, processor, config):
    frames = random_frames(7, seed=5)
    results = []
    for pipeline in (False, True):
        with StreamingSession(llava, processor, config=config, vit_batch=2, pipeline=pipeline, **EXACT) as session:
            report = session.append_frames(frames)
            answer = session.ask(QUESTION, max_new_tokens=5)
            results.append((stored_blocks(session), answer.token_ids, report.tokens_in, report.tokens_kept))
    (serial_blocks, *serial), (piped_blocks, *piped) = results
    assert piped == serial
    for (k1, v1), (k2, v2) in zip(serial_blocks, piped_blocks):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_a_question_during_background_ingestion_sees_the_chunks_done_so_far(llava, processor):
    import threading

    frames = random_frames(6, seed=6)
    with StreamingSession(llava, processor, vit_batch=2, pipeline=True, **EXACT) as session:
        encode, calls, release = session.adapter.stream_blocks, [], threading.Event()

        def held_at_third_chunk(*args):
            calls.append(1)
            if len(calls) == 3:
                release.wait(timeout=60)  # the encoder waits here until the question is answered
            return encode(*args)

        session.adapter.stream_blocks = held_at_third_chunk
        job = session.append_frames(frames, background=True)
        for _ in range(1200):  # until chunks 1 and 2 are prefilled (at most a minute)
            if session.frames_seen >= 4:
                break
            release.wait(0.05)
        answer = session.ask(QUESTION, max_new_tokens=3)
        assert not job.done()
        release.set()
        report = job.result(timeout=60)
        later = session.ask(QUESTION, max_new_tokens=3)
    assert (answer.frames_seen, report.frames, later.frames_seen) == (4, 6, 6)
    assert answer.retrieved[0] == [0, 1, 2, 3]


def test_pipeline_must_be_a_bool(llava, processor):
    with pytest.raises(ValueError, match="pipeline must be True or False"):
        StreamingSession(llava, processor, pipeline="yes")
