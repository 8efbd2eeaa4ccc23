"""The batched LLM prefill of several streams' chunks (`stc.integrations.engine.batch_prefill`):
chunks of one token count run as the rows of one LLM call, each row exactly its stream alone;
chunks of other shapes are refused, a hybrid or mixture-of-experts model's never batch, and a
stream whose memory budget fails after the call fails alone."""

import pytest
import torch

from stc import STCConfig
from stc.errors import MemoryBudgetError
from stc.integrations.engine.batch import EncodedChunk
from stc.integrations.engine.batch_prefill import prefill_key, prefill_streams
from stc.integrations.engine.session import StreamingSession
from stc.integrations.processing import as_frames
from stc.integrations.serve.shared_model import SharedModel, StateSlot
from tests.families import FAMILIES, engine_frames, tiny_qwen3
from tests.tiny import tiny_llava

HALF = STCConfig(keep_ratio=0.5)


def _sessions(shared, options: list[dict]):
    slots, sessions = [], []
    for kwargs in options:
        slots.append(StateSlot())
        with shared.turn(slots[-1]):
            sessions.append(StreamingSession(shared.model, shared.processor, topk=2, max_new_tokens=3, **kwargs))
    return slots, sessions


def _encoded(shared, slots, sessions, family, frames: int):
    times = [float(i) for i in range(frames)]
    chunks = []
    for s, (slot, session) in enumerate(zip(slots, sessions)):
        with shared.turn(slot):
            chunks.append(EncodedChunk(*session.ingestion.encode(as_frames(engine_frames(family, frames, seed=s)), times)))
    return chunks, [times] * len(sessions)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_stream_over_its_budget_fails_alone_and_the_other_row_is_as_alone(one_thread):
    family = FAMILIES["llava_onevision"]
    shared = SharedModel(tiny_llava(dtype=torch.float32), family.processor())
    options = [dict(config=HALF), dict(config=HALF, memory_budget=1)]
    slots, sessions = _sessions(shared, options)
    chunks, times = _encoded(shared, slots, sessions, family, 2)
    assert prefill_key(sessions[0], chunks[0]) == prefill_key(sessions[1], chunks[1]) is not None
    with shared.lock:
        out = prefill_streams(sessions, chunks, times)
    assert isinstance(out[1].error, MemoryBudgetError) and out[1].report is None
    assert out[0].error is None and (out[0].report.frames, out[0].report.tokens_kept) == (2, sum(chunks[0].blocks.visual))
    # the same stream alone: same K/V
    alone_slots, alone = _sessions(shared, options[:1])
    alone_chunks, _ = _encoded(shared, alone_slots, alone, family, 2)
    with shared.turn(alone_slots[0]):
        report = alone[0].append_encoded(alone_chunks[0].blocks, times[0], alone_chunks[0].tokens_in)
    assert (report.frames, report.tokens_in, report.tokens_kept) == (2, out[0].report.tokens_in, out[0].report.tokens_kept)
    for layer in range(sessions[0].driver.num_layers):
        for a, b in zip(sessions[0].store.fetch(layer, sessions[0].store.ids, "cpu"),
                        alone[0].store.fetch(layer, alone[0].store.ids, "cpu")):
            assert torch.equal(a, b)
    for slot, session in zip(slots + alone_slots, sessions + alone):
        with shared.turn(slot):
            session.close()
    shared.close()


def test_chunks_of_other_token_counts_are_refused_untouched():
    family = FAMILIES["llava_onevision"]
    shared = SharedModel(tiny_llava(dtype=torch.float32), family.processor())
    slots, sessions = _sessions(shared, [dict(config=HALF), dict(config=STCConfig(keep_ratio=0.75))])
    chunks, times = _encoded(shared, slots, sessions, family, 2)
    assert prefill_key(sessions[0], chunks[0]) != prefill_key(sessions[1], chunks[1])
    with pytest.raises(ValueError, match="one prefill shape"):
        prefill_streams(sessions, chunks, times)
    assert [s.frames_seen for s in sessions] == [0, 0] and [len(s.store) for s in sessions] == [0, 0]
    for slot, session in zip(slots, sessions):
        with shared.turn(slot):
            session.close()
    shared.close()


@pytest.mark.parametrize("family_name, preset", [("qwen3_5", "qwen3.5-tiny"), ("qwen3_vl_moe", "qwen3-vl-moe-tiny")])
def test_hybrid_and_mixture_of_experts_models_never_batch_their_prefill(family_name, preset):
    """A hybrid model's recurrent state is one stream's; a mixture of experts multiplies each
    expert's routed tokens, whose count (and so a row's bits) would change with the batch."""
    family = FAMILIES[family_name]
    shared = SharedModel(tiny_qwen3(preset, dtype=torch.float32), family.processor())
    slots, sessions = _sessions(shared, [dict(config=HALF), dict(config=HALF)])
    chunks, times = _encoded(shared, slots, sessions, family, 2)
    assert prefill_key(sessions[0], chunks[0]) is None
    with pytest.raises(ValueError, match="one prefill shape"):
        prefill_streams(sessions, chunks, times)
    for slot, session in zip(slots, sessions):
        with shared.turn(slot):
            session.close()
    shared.close()
