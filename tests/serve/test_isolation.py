"""Several sessions on one shared model (`stc.integrations.serve.shared_model`) never see each
other's state: interleaved frame by frame, with questions in between, each gives exactly the
answers, K/V, memory and STC counters it gives alone."""

import pytest
import torch

import stc
from stc import STCConfig
from stc.integrations.engine.session import StreamingSession
from stc.integrations.serve.shared_model import SharedModel, StateSlot
from tests.families import FAMILIES, engine_frames

FRAMES = 6
QUESTIONS = {2: "what is in the video ?", 6: "how many red ?"}  # after this many frames
CONFIGS = [STCConfig(keep_ratio=0.5), STCConfig(cache_interval=3, update_ratio=0.5, keep_ratio=0.7), None,
           STCConfig(keep_ratio=0.25, cut_threshold=None)]


def _options(family):
    # a short window and top-k so that retrieval and the sliding window both matter
    return dict(n_local=3 * 16, topk=2, max_new_tokens=4, vit_batch=family.frames_per_block)


def _run(shared, family, streams, order):
    """Sessions for `streams` (index -> (config, frames)), fed in `order` (stream indices, one
    block each); returns per stream: answers' token ids, final K/V, memory and stats."""
    sessions, slots, fed, out = {}, {}, {}, {}
    for s, (config, _) in streams.items():
        slots[s] = StateSlot()
        with shared.turn(slots[s]):
            sessions[s] = StreamingSession(shared.model, shared.processor, config=config, **_options(family))
        fed[s], out[s] = 0, {"answers": []}
    step = family.frames_per_block
    for s in order:
        frames = streams[s][1]
        with shared.turn(slots[s]):
            sessions[s].append_frames(frames[fed[s] : fed[s] + step])
            fed[s] += step
            if fed[s] in QUESTIONS:
                answer = sessions[s].ask(QUESTIONS[fed[s]])
                out[s]["answers"].append((answer.token_ids, answer.retrieved))
    for s, session in sessions.items():
        with shared.turn(slots[s]):
            store = session.store
            out[s]["kv"] = [store.fetch(layer, store.ids, "cpu") for layer in (0, session.driver.num_layers - 1)]
            out[s]["memory"] = session.memory()
            out[s]["stats"] = stc.stats(shared.model)
            session.close()
    return out


@pytest.mark.parametrize("family_name, count", [("llava_onevision", 4), ("qwen2_5_vl", 3), ("qwen3_5", 2)])
def test_interleaved_sessions_on_one_model_equal_each_alone(family_name, count):
    family = FAMILIES[family_name]
    model = family.build()
    streams = {s: (CONFIGS[s], engine_frames(family, FRAMES, seed=10 + s)) for s in range(count)}
    blocks = FRAMES // family.frames_per_block
    alone = {}
    for s in streams:
        shared = SharedModel(model, family.processor())
        alone.update(_run(shared, family, {s: streams[s]}, [s] * blocks))
        shared.close()
    assert not stc.is_patched(model)
    shared = SharedModel(model, family.processor())
    interleaved = _run(shared, family, streams, [s for _ in range(blocks) for s in streams])
    shared.close()
    for s in streams:
        assert interleaved[s]["answers"] == alone[s]["answers"], f"stream {s}"
        assert interleaved[s]["memory"] == alone[s]["memory"], f"stream {s}"
        assert interleaved[s]["stats"] == alone[s]["stats"], f"stream {s}"
        for (k1, v1), (k2, v2) in zip(interleaved[s]["kv"], alone[s]["kv"]):
            assert torch.equal(k1, k2) and torch.equal(v1, v2), f"stream {s}"
    # the streams differ from each other, so equality above is not a coincidence
    assert alone[0]["answers"] != alone[1]["answers"] or alone[0]["stats"] != alone[1]["stats"]


def test_a_stream_sees_only_its_own_counters():
    family = FAMILIES["llava_onevision"]
    shared = SharedModel(family.build(), family.processor())
    slots = [StateSlot(), StateSlot()]
    sessions = []
    for slot in slots:
        with shared.turn(slot):
            sessions.append(StreamingSession(shared.model, shared.processor, config=STCConfig(), **_options(family)))
    with shared.turn(slots[0]):
        sessions[0].append_frames(engine_frames(family, 3))
    with shared.turn(slots[1]):
        assert stc.stats(shared.model)["frames"] == 0
        sessions[1].append_frames(engine_frames(family, 1))
    with shared.turn(slots[0]):
        assert stc.stats(shared.model)["frames"] == 3
        sessions[0].close()
    with shared.turn(slots[1]):
        assert stc.is_patched(shared.model), "closing one session must not unpatch the shared model"
        sessions[1].close()
    shared.close()
    assert not stc.is_patched(shared.model)
