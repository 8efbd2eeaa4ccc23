"""The engine's parts behind `StreamingSession`: memory tiers, stream stats, option lettering, the
options' checks."""

import pytest
import torch

import stc
from stc.integrations.engine.options import SessionOptions
from stc.integrations.engine.prompt import MC_INSTRUCTION, format_options, lettered_options, option_letter
from stc.integrations.engine.session import MEMORY_TIERS, StreamingSession
from tests.integrations.test_engine import QUESTION
from tests.tiny import random_frames, tiny_llava, tiny_processor

TOKENS = 4  # visual tokens per frame of the tiny LLaVA


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _storages(tensors) -> dict[int, int]:
    """data pointer -> bytes of the memory each tensor keeps alive."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


@pytest.mark.parametrize("n_local, sink_frames, kv_bits", [(100000, 0, 16), (2 * TOKENS + 1, 1, 16), (TOKENS, 1, 4)])
def test_memory_tiers_add_up_and_nothing_is_counted_twice(n_local, sink_frames, kv_bits):
    model = tiny_llava(dtype=torch.float32)
    frames = random_frames(7, seed=8)
    with StreamingSession(model, tiny_processor(), n_local=n_local, topk=2, sink_frames=sink_frames,
                          kv_bits=kv_bits, vit_batch=2) as session:
        session.append_frames(frames)
        memory = session.memory()
        assert memory["total_bytes"] == sum(memory[tier] for tier in MEMORY_TIERS)
        assert memory["block_bytes"] == memory["full_precision_block_bytes"] + memory["quantized_block_bytes"]
        layers = session.kv.layers
        header = _bytes(t for kv in layers for t in (kv.sink_k, kv.sink_v))
        frame_sink = _bytes(t for kv in layers for t in (kv.frame_k, kv.frame_v) if t is not None)
        window = _bytes(t for kv in layers for t in (kv.win_k, kv.win_v) if t is not None)
        assert (memory["sink_bytes"], memory["window_bytes"]) == (header + frame_sink, window)
        assert frame_sink == sink_frames * TOKENS * 2 * 2 * 2 * 8 * 4  # tokens * layers * (K, V) * heads * dim * fp32
        assert memory["window_tokens"] == min(n_local, (7 - sink_frames) * TOKENS)
        # each device tier owns exactly the memory it reports, none of it shared with another
        # tier or with the store's full-precision blocks (whose internals only this test reads)
        held = [t for kv in layers for t in kv.tensors()]
        storages = _storages(held)
        assert len(storages) == len(held) and sum(storages.values()) == memory["sink_bytes"] + memory["window_bytes"]
        blocks = [t for block in session.store._blocks.values() if block["bits"] == 16
                  for t in block["keys"] + block["values"]]
        assert not storages.keys() & _storages(blocks).keys()
        if n_local >= 7 * TOKENS:  # a short stream: the window and the store hold the same frames, twice
            assert memory["window_bytes"] == memory["block_bytes"]


def test_stream_stats_while_open_and_after_close():
    model = tiny_llava()
    config = stc.STCConfig(cache_interval=2, update_ratio=0.25, keep_ratio=0.5)
    session = StreamingSession(model, tiny_processor(), config=config, n_local=100000, topk=1000)
    with session:
        session.append_frames(random_frames(4, seed=9))
        open_stats = stc.stats(model)
        assert session.stats() == open_stats and open_stats["frames"] == 4
    assert not stc.is_patched(model)
    assert session.stats() == open_stats
    with pytest.raises(ValueError, match=r"not patched.*session\.stats\(\)"):
        stc.stats(model)


def test_options_are_lettered_one_way():
    assert [option_letter(i) for i in range(4)] == ["A", "B", "C", "D"]
    assert lettered_options(["red", "B) blue", "C. green"]) == ["A. red", "B) blue", "C. green"]
    assert lettered_options(["A. red", "C. blue"]) == ["A. red", "B. C. blue"]  # only its own letter is kept
    assert lettered_options(["A. red", 2], keep_lettered=False) == ["A. A. red", "B. 2"]
    assert format_options(QUESTION, None) == QUESTION == format_options(QUESTION, [])
    assert format_options(QUESTION, ["red", "blue"]) == "\n".join([QUESTION, "A. red", "B. blue", MC_INSTRUCTION])


@pytest.mark.parametrize("name, value", [("n_local", True), ("topk", 2.0), ("vit_batch", 0), ("memory_budget", False),
                                         ("sample_fps", True), ("sample_fps", float("nan")), ("sample_fps", 0)])
def test_session_options_refuse_bools_nan_and_non_counts(name, value):
    """The checks share stc.validation: a bool is no count and no rate, NaN is no rate."""
    with pytest.raises(ValueError, match=name):
        SessionOptions(**{name: value})
    assert SessionOptions(n_local=10**400, sample_fps=0.5).n_local == 10**400
