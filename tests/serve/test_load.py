"""A short load test through the real HTTP server (uvicorn on loopback, in this process): the
driver of docs/serve_load.py (`stc.integrations.serve.loadtest`) with 2 live fake streams, 3
client threads and 12 questions over about 15 s on the tiny LLaVA-OneVision, each stream's
budget small enough that blocks are evicted: no question lost, memory never over budget."""

import os

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from stc.integrations.serve.loadtest import (LoadPlan, LoadTest, Outcome, failures, percentile,  # noqa: E402
                                             summarize, write_samples_csv)
from tests.serve.fakes import RunningServer, manager  # noqa: E402
from tests.tiny import tiny_llava, tiny_processor  # noqa: E402

BUDGET = 40_000


def test_a_short_load_test_loses_no_question_and_stays_under_budget(tmp_path):
    streams = manager(tiny_llava(), tiny_processor())
    plan = LoadPlan(streams=2, clients=3, questions=12, seconds=15.0, sample_s=1.0, max_new_tokens=4,
                    texts=("what is in the video ?", "what colour is the first ?"),
                    stream_body={"source": "rtsp://fake/live/100000", "sample_fps": 20.0, "n_local": 16, "vit_batch": 8,
                                 "memory_budget": BUDGET})
    lines = []
    try:
        with RunningServer(streams) as server:
            outcomes, samples = LoadTest(server.url, os.getpid(), plan, progress=lines.append).run()
    finally:
        streams.close()
    summary = summarize(outcomes, samples, plan)
    assert failures(summary) == []
    assert summary["sent"] == 12 and summary["answered"] == 12 and summary["lost"] == summary["refused"] == 0
    assert {o.endpoint for o in outcomes} == {"ask", "chat", "sse"}
    assert all(summary["latency"][e]["p50_s"] > 0 for e in ("ask", "chat", "sse"))
    assert len(samples) >= 10 and len(lines) == len(samples) and summary["rss"]["max"] > 0
    for stream in summary["streams"].values():  # the budget was reached and held: blocks were evicted
        assert stream["memory_budget"] == BUDGET and stream["evicted_blocks"] > 0
        assert BUDGET / 2 < stream["memory_max"] <= BUDGET and stream["state"] == "live"
    write_samples_csv(samples, tmp_path / "samples.csv")
    rows = (tmp_path / "samples.csv").read_text().splitlines()
    assert rows[0].startswith("t_s,rss_bytes,stream,state,frames,memory_bytes") and len(rows) == 1 + 2 * len(samples)


def test_a_lost_question_or_memory_over_budget_fails_the_run():
    plan = LoadPlan(streams=1, clients=1, questions=2, seconds=1.0)
    sample = {"t_s": 0.0, "rss_bytes": 1, "error": None,
              "streams": {"load-1": {"state": "live", "frames": 3, "memory_bytes": 10, "memory_budget": 10,
                                     "dropped_frames": 0, "evicted_blocks": 0}}}
    answered = Outcome(0, "ask", "load-1", 0.0, "answered", 200, 0.5)
    lost = Outcome(1, "sse", "load-1", 0.5, "lost", None, 120.0, "ReadTimeout")
    assert failures(summarize([answered, Outcome(1, "chat", "load-1", 0.5, "refused", 409, 0.1, "x")], [sample], plan)) == []
    assert failures(summarize([answered, lost], [sample], plan)) == ["1 questions lost (no response, or not answered nor refused)"]
    over = {**sample, "streams": {"load-1": {**sample["streams"]["load-1"], "memory_bytes": 11}}}
    assert failures(summarize([answered], [sample, over], plan)) == [
        "2 questions planned, 1 sent", "stream load-1: memory over its budget in 1 samples (max 11 > 10)"]
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([5.0], 95) == 5.0


def test_a_server_that_is_gone_makes_failed_samples_not_a_crash():
    plan = LoadPlan(streams=1, clients=1, questions=1, seconds=1.0)
    lines = []
    test = LoadTest("http://127.0.0.1:9", 2**22 + 1, plan, progress=lines.append)  # no such port open, no such pid
    test._sample()
    assert test.samples[0]["rss_bytes"] is None and "FileNotFoundError" in test.samples[0]["error"]
    assert "sample failed" in lines[0]
    summary = summarize([Outcome(0, "ask", "load-1", 0.0, "answered", 200, 0.1)], test.samples, plan)
    assert summary["rss"] == {} and "1 samples of /v1/streams failed" in failures(summary)
