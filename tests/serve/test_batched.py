"""Batched multi-stream ingestion (`stc.integrations.serve.batch.ingest_many`): one vision-encoder
call for the streams of a tick that share an STC config, chunk length and frame size, and one
LLM prefill for the streams whose new blocks have one token count, give exactly the blocks, K/V,
answers, memory and counters of each stream ingesting alone, in its own turn (tiny
LLaVA-OneVision in float64 and float32, Qwen2.5-VL, Qwen3-VL and Qwen3.5 in float32; STC on:
Cacher reuse and pruning), over several ticks, with a stream that joins later (no reference
yet), one with another config (encoded and prefilled alone: another keep ratio), a tick whose
frames make two chunks, Qwen3-VL timestamps of different token counts (prefilled apart) and a
hybrid model (Qwen3.5: every prefill alone)."""

import time

import pytest
import torch

import stc
from stc import STCConfig
from stc.integrations.engine.session import StreamingSession
from stc.integrations.serve.batch import StreamFrames, ingest_many
from stc.integrations.serve.shared_model import SharedModel, StateSlot
from tests.serve.fakes import manager, wait_for
from tests.families import FAMILIES, engine_frames, tiny_qwen3
from tests.tiny import random_frames, tiny_llava, tiny_processor, tiny_qwen

SHARED = STCConfig(cache_interval=3, update_ratio=0.5, keep_ratio=0.5)
CONFIGS = [SHARED, SHARED, SHARED, STCConfig(cache_interval=2, keep_ratio=0.75)]
# per tick, frames each stream delivers (0: none); stream 2 joins at tick 3; tick 4 has a delivery of
# two chunks (vit_batch 2) and, for LLaVA, one of a single frame (another chunk shape: alone)
TICKS = {1: [[2, 2, 0, 2], [2, 2, 0, 2], [2, 2, 2, 2], [3, 2, 2, 1], [2, 0, 2, 2]],
         2: [[2, 2, 0, 2], [2, 2, 0, 2], [2, 2, 2, 2], [4, 2, 2, 2], [2, 0, 2, 2]]}  # by frames per block
QUESTIONS = {2: "what is in the video ?", 5: "how many red ?"}  # after this many ticks
OPTIONS = dict(topk=2, max_new_tokens=4, vit_batch=2)
N_LOCAL = {"llava_onevision": 3 * 4, "qwen2_5_vl": 3 * 9, "qwen3_vl": 3 * 16, "qwen3_5": 3 * 16}  # about 3 blocks
BUILDERS = {"llava_onevision": tiny_llava, "qwen2_5_vl": lambda dtype: tiny_qwen("qwen2_5_vl", dtype=dtype),
            "qwen3_vl": lambda dtype: tiny_qwen3("qwen3-vl-tiny", dtype=dtype),
            "qwen3_5": lambda dtype: tiny_qwen3("qwen3.5-tiny", dtype=dtype)}
# float64 Qwen is not bitwise batch-invariant on this CPU (tests/integrations/test_engine_batch.py)
CASES = [("llava_onevision", torch.float64), ("llava_onevision", torch.float32), ("qwen2_5_vl", torch.float32),
         ("qwen3_vl", torch.float32), ("qwen3_5", torch.float32)]
# per tick, the rows of each LLM prefill call: streams 0-2 share a keep ratio (equal token counts);
# stream 3 (another) and stream 0's second chunk of tick 4 alone; Qwen3-VL's streams 0 and 2 at
# tick 5 are at times whose timestamp texts differ in length; Qwen3.5 (hybrid) prefills one by one
SHARED_ROWS = [[2, 1], [2, 1], [3, 1], [3, 1, 1], [2, 1]]
PREFILL_ROWS = {"llava_onevision": SHARED_ROWS, "qwen2_5_vl": SHARED_ROWS,
                "qwen3_vl": SHARED_ROWS[:4] + [[1, 1, 1]],
                "qwen3_5": [[1, 1, 1], [1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1]]}


def _run(model, family, batched: bool, configs=CONFIGS, ticks=None):
    shared = SharedModel(model, family.processor())
    ticks = ticks or TICKS[family.frames_per_block]
    slots, sessions = [], []
    for config in configs:
        slots.append(StateSlot())
        with shared.turn(slots[-1]):
            sessions.append(StreamingSession(shared.model, shared.processor, config=config,
                                             n_local=N_LOCAL[family.model_type], **OPTIONS))
    videos = [engine_frames(family, sum(t[s] for t in ticks), seed=20 + s) for s in range(len(configs))]
    fed = [0] * len(configs)
    out = {"answers": [[] for _ in configs], "reports": [[] for _ in configs], "calls": [], "prefill_rows": []}
    rows = []  # the batch size of every call of the LLM's first decoder layer
    counting = sessions[0].driver.layers[0].register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    for tick, counts in enumerate(ticks, start=1):
        items = []
        for s, count in enumerate(counts):
            if count:
                items.append((s, videos[s][fed[s] : fed[s] + count]))
                fed[s] += count
        if batched:
            rows.clear()
            step = ingest_many(shared, [StreamFrames(slots[s], sessions[s], frames) for s, frames in items])
            assert all(r.error is None for r in step.results)
            reports = [r.report for r in step.results]
            out["calls"].append((step.encoder_calls, step.batched_calls))
            assert (step.prefill_calls, step.batched_prefills) == (len(rows), sum(r > 1 for r in rows))
            out["prefill_rows"].append(list(rows))
        else:
            reports = []
            for s, frames in items:
                with shared.turn(slots[s]):
                    reports.append(sessions[s].append_frames(frames))
        for (s, _), report in zip(items, reports):
            out["reports"][s].append((report.frames, report.tokens_in, report.tokens_kept, [k.tolist() for k in report.kept]))
        if tick in QUESTIONS:
            for s, session in enumerate(sessions):
                with shared.turn(slots[s]):
                    answer = session.ask(QUESTIONS[tick])
                out["answers"][s].append((answer.token_ids, answer.retrieved))
    out["kv"], out["memory"], out["stats"] = [], [], []
    counting.remove()
    for slot, session in zip(slots, sessions):
        with shared.turn(slot):
            store = session.store
            out["kv"].append([store.fetch(layer, store.ids, "cpu") for layer in range(session.driver.num_layers)])
            out["memory"].append(session.memory())
            out["stats"].append(stc.stats(shared.model))
            session.close()
    shared.close()
    return out


@pytest.fixture
def one_thread():
    """Bitwise claims hold on one CPU thread: with several, the CPU GEMM splits its rows over the
    threads by the row count, so Qwen's K/V can differ in the last bit between a batch and a
    stream alone (test_batched_ingestion_on_several_threads_is_close)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family_name, dtype", CASES)
def test_batched_ingestion_equals_each_stream_alone(family_name, dtype, one_thread):
    family = FAMILIES[family_name]
    model = BUILDERS[family_name](dtype)
    alone = _run(model, family, batched=False)
    batched = _run(model, family, batched=True)
    assert not stc.is_patched(model)
    _assert_equal(batched, alone, len(CONFIGS))
    # one call for the streams of one config (two before stream 2 joins), one for stream 3 (its own
    # config); tick 4: stream 0's second chunk is a call of its own
    assert batched["calls"] == [(2, 1), (2, 1), (2, 1), (3, 1), (2, 1)]
    assert batched["prefill_rows"] == PREFILL_ROWS[family_name]
    # STC really ran (the Cacher reused tokens, the Pruner dropped some) and the streams differ
    stats = alone["stats"]
    assert all(st["vit_tokens_recomputed"] < st["vit_tokens"] and st["llm_tokens_kept"] < st["llm_tokens_in"] for st in stats)
    delivered = [sum(t[s] for t in TICKS[family.frames_per_block]) for s in range(len(CONFIGS))]
    assert [st["frames"] * family.frames_per_block for st in stats] == delivered  # Qwen counts temporal slices
    assert len({str(a) for a in alone["answers"]}) > 1 or len({str(st) for st in stats}) > 1


def _assert_equal(batched: dict, alone: dict, streams: int) -> None:
    """Bitwise: reports, answers, memory, counters and every layer's K/V of each stream."""
    for s in range(streams):
        assert batched["reports"][s] == alone["reports"][s], f"stream {s}"
        assert batched["answers"][s] == alone["answers"][s], f"stream {s}"
        assert batched["memory"][s] == alone["memory"][s], f"stream {s}"
        assert batched["stats"][s] == alone["stats"][s], f"stream {s}"
        for layer, ((k1, v1), (k2, v2)) in enumerate(zip(batched["kv"][s], alone["kv"][s])):
            assert torch.equal(k1, k2) and torch.equal(v1, v2), f"stream {s}, layer {layer}"


@pytest.mark.parametrize("family_name", ["llava_onevision", "qwen2_5_vl"])
def test_streams_of_other_configs_but_one_token_count_share_a_prefill(family_name, one_thread):
    """Two STC configs with one keep ratio: encoded in two calls, prefilled in one."""
    family = FAMILIES[family_name]
    model = BUILDERS[family_name](torch.float32)
    configs = [SHARED, STCConfig(cache_interval=2, keep_ratio=SHARED.keep_ratio)]
    ticks = [[2, 2]] * 3  # a chunk each: a frame pair (LLaVA), one temporal slice (Qwen)
    alone = _run(model, family, batched=False, configs=configs, ticks=ticks)
    batched = _run(model, family, batched=True, configs=configs, ticks=ticks)
    _assert_equal(batched, alone, len(configs))
    assert batched["calls"] == [(2, 0)] * 3
    assert batched["prefill_rows"] == [[2]] * 3


def test_the_adaptive_budget_batches_the_prefills_whose_counts_agree(one_thread):
    """One config with the adaptive Pruner budget: each stream keeps as many tokens as its content
    asks, so a tick's chunks of one encoder call can split into several prefills."""
    family = FAMILIES["llava_onevision"]
    model = BUILDERS["llava_onevision"](torch.float32)
    configs = [SHARED.replace(pruner_budget="adaptive", pruner_scoring="cacher_change")] * 4
    ticks = [[2, 2, 2, 2]] * 6
    alone = _run(model, family, batched=False, configs=configs, ticks=ticks)
    batched = _run(model, family, batched=True, configs=configs, ticks=ticks)
    _assert_equal(batched, alone, len(configs))
    assert batched["calls"] == [(1, 1)] * 6
    assert any(len(rows) > 1 for rows in batched["prefill_rows"])  # counts that differ: prefilled apart
    assert any(r > 1 for rows in batched["prefill_rows"] for r in rows)  # and counts that agree: together
    assert all(sum(rows) == 4 for rows in batched["prefill_rows"])


@pytest.mark.parametrize("family_name, dtype", CASES[2:])
def test_batched_ingestion_on_several_threads_is_close(family_name, dtype):
    """On two threads the same run keeps the same tokens and gives the same answers, with K/V
    equal to rounding (what `stc serve` gives on a multi-threaded CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        family = FAMILIES[family_name]
        model = BUILDERS[family_name](dtype)
        alone = _run(model, family, batched=False)
        batched = _run(model, family, batched=True)
    finally:
        torch.set_num_threads(threads)
    for s in range(len(CONFIGS)):
        assert batched["reports"][s] == alone["reports"][s], f"stream {s}"
        assert batched["answers"][s] == alone["answers"][s], f"stream {s}"
        assert batched["stats"][s] == alone["stats"][s], f"stream {s}"
        for (k1, v1), (k2, v2) in zip(batched["kv"][s], alone["kv"][s]):
            torch.testing.assert_close(k1, k2, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-6)


def test_a_bad_delivery_stops_only_its_stream():
    model = tiny_llava()
    shared = SharedModel(model, tiny_processor())
    slots, sessions = [StateSlot(), StateSlot(), StateSlot()], []
    for slot in slots:
        with shared.turn(slot):
            sessions.append(StreamingSession(shared.model, shared.processor, config=SHARED, **OPTIONS))
    frames = random_frames(2)
    step = ingest_many(shared, [StreamFrames(slots[0], sessions[0], frames, timestamps=[3.0, 1.0]),
                                StreamFrames(slots[1], sessions[1], frames), StreamFrames(slots[2], sessions[2], frames)])
    assert "must not go back in time" in str(step.results[0].error)
    assert [r.error for r in step.results[1:]] == [None, None] and (step.encoder_calls, step.batched_calls) == (1, 1)
    assert [s.frames_seen for s in sessions] == [0, 2, 2]
    other = StateSlot()
    with shared.turn(other):
        sessions.append(StreamingSession(shared.model, shared.processor, config=STCConfig(keep_ratio=0.3)))
    with pytest.raises(ValueError, match="one STC config"):
        with shared.batch_turn([slots[1], other]):
            pass
    for slot, session in zip(slots + [other], sessions):
        with shared.turn(slot):
            session.close()
    shared.close()


def _manager_round(model, batched: bool):
    """Three fake file streams of 4 frames each (STC on, one config), queued while the ingestion
    thread is stopped, then the manager's rounds played by hand: the encoder calls of the first."""
    m = manager(model, tiny_processor(), batch_streams=batched)
    m._stop.set()  # the test plays the ingestion thread's rounds itself, so that all frames are queued first
    m._thread.join(10)
    streams = [m.add({"source": f"rtsp://fake/file/4/{seed}"}) for seed in range(3)]
    wait_for(lambda: all(len(s.queue) == 4 for s in streams), what="the frames queued")
    round_of = m._batched_round if batched else m._round
    assert round_of(m.list())
    calls = m.encoder_calls, m.llm_prefill_calls
    assert m.memory()["llm_prefill_calls"] == m.llm_prefill_calls
    assert not round_of(m.list())  # nothing left: every stream ends
    figures = [{k: v for k, v in s.describe()["figures"].items() if k != "ingest_fps"} for s in streams]
    states = [s.state for s in streams]
    m.close()
    return calls, figures, states


def test_the_manager_encodes_and_prefills_a_round_of_streams_in_one_call():
    model = tiny_llava()
    batched_calls, batched, batched_states = _manager_round(model, True)
    serial_calls, serial, serial_states = _manager_round(model, False)
    assert (batched_calls, serial_calls) == ((1, 1), (3, 3))  # (encoder calls, LLM prefill calls)
    assert batched == serial
    assert all(f["frames"] == 4 and f["llm_tokens_kept"] < f["llm_tokens_in"] for f in batched)
    assert batched_states == serial_states == ["ended"] * 3


@pytest.mark.parametrize("batched", [True, False])
def test_a_stream_whose_frames_change_size_fails_alone(batched):
    m = manager(tiny_llava(), tiny_processor(), batch_streams=batched)
    with m.shared.lock:  # the model is busy: both queues fill, so that a chunk holds frames of both sizes
        bad, good = m.add({"source": "rtsp://fake/resizing/4"}), m.add({"source": "rtsp://fake/file/4"})
        wait_for(lambda: len(bad.queue) == 4 and len(good.queue) == 4, what="the frames queued")
    wait_for(lambda: bad.state != "live" and good.state != "live", what="both streams to stop")
    assert bad.state == "failed" and "ingestion failed: ValueError: all input arrays must have the same shape" in bad.end_message
    assert good.state == "ended" and good.describe()["figures"]["frames"] == 4
    m.close()


def test_no_round_runs_between_rounds():
    m = manager(tiny_llava(), tiny_processor())
    with m.between_rounds():  # what docs/serve_throughput.py holds to read the counters
        stream = m.add({"source": "rtsp://fake/file/4"})
        wait_for(lambda: len(stream.queue) == 4, what="the frames queued")
        rounds, calls = m.ingest_rounds, m.encoder_calls
        assert stream.session.frames_seen == 0
    wait_for(lambda: stream.state == "ended", what="the end of the file")
    assert (rounds, calls) == (0, 0) and m.encoder_calls == 1 and stream.session.frames_seen == 4
    m.close()


def test_between_rounds_waits_at_most_for_the_round_in_progress():
    # an ingestion thread that never idles (every round works for 5 ms): a plain lock, released
    # and at once taken again by it, would keep a caller waiting for many rounds
    m = manager(tiny_llava(), tiny_processor(), batch_streams=False)

    def busy_round(streams):
        time.sleep(0.005)
        return True

    m._round = busy_round
    wait_for(lambda: m.ingest_rounds > 3, what="rounds")
    waited = []
    for _ in range(20):
        before = m.ingest_rounds
        with m.between_rounds():
            during = m.ingest_rounds
            time.sleep(0.002)
            assert m.ingest_rounds == during  # no round while held
        waited.append(during - before)
    assert max(waited) <= 1, waited  # only the round in progress ends first
    m.close()
