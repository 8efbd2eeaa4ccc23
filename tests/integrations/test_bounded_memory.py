"""Bounded memory in the streaming engine: quantized blocks, the frame sink, the memory budget."""

import pytest
import torch

from stc.integrations.engine.session import MemoryBudgetError, StreamingSession
from tests.integrations.test_engine import EXACT, QUESTION, stored_blocks
from tests.tiny import random_frames, tiny_llava, tiny_processor

TOKENS = 4  # tiny LLaVA: tokens per frame


def test_16_bits_is_the_unquantized_engine(llava, processor):
    frames = random_frames(6, seed=1)
    runs = []
    for kwargs in ({}, {"kv_bits": 16}):
        with StreamingSession(llava, processor, n_local=2 * TOKENS, topk=3, **kwargs) as session:
            session.append_frames(frames)
            answer = session.ask(QUESTION, max_new_tokens=4)
            runs.append((answer.token_ids, answer.retrieved, stored_blocks(session)))
            assert all(session.store.bits(b) == 16 for b in session.store.ids)
    assert runs[0][:2] == runs[1][:2]
    for (k1, v1), (k2, v2) in zip(runs[0][2], runs[1][2]):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


@pytest.mark.parametrize("scheme", ["kivi", "qvg"])
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_blocks_are_quantized_when_they_leave_the_window_and_retrieval_is_unchanged(llava, processor, bits, scheme):
    frames = random_frames(6, seed=2)
    with StreamingSession(llava, processor, n_local=2 * TOKENS, topk=3, vit_batch=3) as full:
        full.append_frames(frames)
        expected = full.ask(QUESTION, max_new_tokens=1).retrieved
        full_blocks = stored_blocks(full)
        full_memory = full.memory()
    with StreamingSession(llava, processor, n_local=2 * TOKENS, topk=3, vit_batch=3, kv_bits=bits,
                          kv_scheme=scheme) as session:
        session.append_frames(frames[:3])
        session.append_frames(frames[3:])
        assert [session.store.bits(b) for b in session.store.ids] == [bits] * 4 + [16] * 2  # the window: last 2
        assert session.ask(QUESTION, max_new_tokens=1).retrieved == expected
        memory = session.memory()
        assert memory["quantized_block_bytes"] > 0 and memory["full_precision_block_bytes"] == full_memory["block_bytes"] // 3
        assert memory["representative_key_bytes"] == full_memory["representative_key_bytes"]
        for (k, v), (k_full, v_full) in zip(stored_blocks(session), full_blocks):
            assert torch.equal(k[:, -2 * TOKENS :], k_full[:, -2 * TOKENS :])  # the window's blocks are exact
            error = (k - k_full).norm() / k_full.norm()
            assert 0 < error < {8: 0.02, 4: 0.2, 2: 0.7}[bits]


def test_frames_in_the_sink_are_seen_by_every_later_frame(llava, processor):
    """With every frame in the sink, a 1-token window still gives full attention."""
    frames = random_frames(5, seed=3)
    with StreamingSession(llava, processor, **EXACT) as full:
        full.append_frames(frames)
        expected = stored_blocks(full)
        answer = full.ask(QUESTION, max_new_tokens=3).token_ids
    with StreamingSession(llava, processor, n_local=1, topk=1000, sink_frames=5) as session:
        session.append_frames(frames[:2])  # the sink fills across calls
        session.append_frames(frames[2:])
        for (k1, v1), (k2, v2) in zip(stored_blocks(session), expected):
            torch.testing.assert_close(k1, k2, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-12)
        assert session.ask(QUESTION, max_new_tokens=3).token_ids == answer
        assert session.memory()["window_tokens"] == 0  # every frame went to the sink


def test_a_chunk_that_fills_the_sink_matches_filling_it_first(llava, processor):
    """Frames that join the sink mid-chunk are visible to the chunk's later frames beyond the
    window, as they are when the sink was filled by an earlier call."""
    frames = random_frames(6, seed=4)
    runs = []
    for chunks in ([frames], [frames[:2], frames[2:]]):
        with StreamingSession(llava, processor, n_local=TOKENS + 1, topk=1000, sink_frames=2) as session:
            for chunk in chunks:
                session.append_frames(chunk)
            runs.append(stored_blocks(session))
            assert session.kv.sink_blocks == [0, 1] and session.kv.window == [4, 5]
    for (k1, v1), (k2, v2) in zip(*runs):
        torch.testing.assert_close(k1, k2, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-12)


def test_the_budget_is_never_exceeded_and_the_sink_never_evicted():
    model = tiny_llava(dtype=torch.float32)
    frames = random_frames(40, seed=5)
    budget = 16_000
    with StreamingSession(model, tiny_processor(), n_local=2 * TOKENS, topk=4, sink_frames=2, kv_bits=4,
                          memory_budget=budget, vit_batch=3) as session:
        for start in range(0, 40, 3):
            session.append_frames(frames[start : start + 3])
            memory = session.memory()
            assert memory["total_bytes"] <= budget
            assert session.store.ids[:2] == [0, 1]  # the sink
            assert all(b in session.store.ids for b in session.kv.window)
        assert memory["evicted_blocks"] > 0 and memory["blocks"] + memory["evicted_blocks"] == 40
        assert [session.store.bits(b) for b in session.store.ids[2:-2]] == [2] * (memory["blocks"] - 4)
        assert len(session.ask(QUESTION, max_new_tokens=2).token_ids) == 2


def test_the_least_novel_block_is_evicted_first(llava, processor):
    frames = random_frames(6, seed=6)
    frames[3] = frames[2]  # frame 3 repeats frame 2: nothing new
    with StreamingSession(llava, processor, n_local=TOKENS, topk=1000, kv_bits=2) as probe:
        probe.append_frames(frames)
        budget = probe.memory()["total_bytes"] - 1  # one block too many
    with StreamingSession(llava, processor, n_local=TOKENS, topk=1000, kv_bits=2, memory_budget=budget) as session:
        session.append_frames(frames)
        assert session.store.ids == [0, 1, 2, 4, 5] and session.memory()["evicted_blocks"] == 1


def test_oldest_first_eviction_keeps_the_latest_blocks(llava, processor):
    frames = random_frames(8, seed=7)
    with StreamingSession(llava, processor, n_local=TOKENS, topk=1000, kv_bits=2, sink_frames=1) as probe:
        probe.append_frames(frames[:6])
        budget = probe.memory()["total_bytes"]  # six blocks
    with StreamingSession(llava, processor, n_local=TOKENS, topk=1000, kv_bits=2, memory_budget=budget,
                          eviction="oldest", sink_frames=1) as session:
        session.append_frames(frames)
        assert session.store.ids == [0, 3, 4, 5, 6, 7] and session.memory()["evicted_blocks"] == 2


def test_a_budget_too_small_for_the_window_is_a_clear_error(llava, processor):
    with StreamingSession(llava, processor, n_local=4 * TOKENS, memory_budget=1000) as session:
        with pytest.raises(MemoryBudgetError, match="cannot hold the sink and the ingestion window"):
            session.append_frames(random_frames(3))


@pytest.mark.parametrize("kwargs, match", [
    ({"kv_bits": 3}, "kv_bits must be one of 16, 8, 4, 2"),
    ({"kv_bits": True}, "kv_bits"),
    ({"kv_scheme": "fp8"}, "kv_scheme must be one of kivi, qvg"),
    ({"sink_frames": -1}, "sink_frames"),
    ({"memory_budget": 0}, "memory_budget"),
    ({"memory_budget": 1.5e9}, "memory_budget"),
    ({"eviction": "lru"}, "eviction must be one of novelty, oldest"),
])
def test_invalid_memory_options(llava, processor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamingSession(llava, processor, **kwargs)
