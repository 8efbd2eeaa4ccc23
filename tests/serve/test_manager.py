"""The stream manager: sources that end or disconnect, dropped frames, failures, the media root,
options and budgets checked, removal. Fake sources, the tiny random LLaVA-OneVision."""

import os

import pytest

import stc
from stc.integrations.serve.errors import BadRequest, Conflict, Forbidden, NotFound
from stc.integrations.serve.requests import Question
from stc.integrations.serve.streams import ENDED, FAILED, LIVE
from tests.serve.fakes import manager, wait_for, write_video
from tests.tiny import tiny_llava, tiny_processor


@pytest.fixture(scope="module")
def model():
    return tiny_llava()


@pytest.fixture
def streams(model, tmp_path):
    (tmp_path / "media").mkdir()
    m = manager(model, tiny_processor(), media_root=tmp_path / "media", max_streams=3)
    yield m
    m.close()
    assert not stc.is_patched(model)


def test_a_source_that_ends_is_marked_and_its_memory_still_answers(streams):
    stream = streams.add({"source": "rtsp://fake/file/6", "name": "cam"})
    wait_for(lambda: stream.state == ENDED, what="the end of the file")
    assert stream.end_message == "fake file 0: end of video"
    figures = stream.describe()["figures"]
    assert figures["frames"] == 6 and figures["dropped_frames"] == 0
    assert figures["vit_tokens_reused"] > 0 and figures["llm_tokens_kept"] < figures["llm_tokens_in"]
    status = stream.status  # the overlay's timings: the vision tower within the whole encoding
    assert 0 < status.vit_ms_per_frame < status.encode_ms_per_frame and 0 < status.resize_ms_per_frame
    assert not streams.shared.state.timer.enabled  # on only while a chunk is ingested
    assert 1 <= streams.ingest_rounds <= 6  # rounds that ingested something: at least a frame each, idle ones not counted
    reply = streams.ask("cam", Question("what is in the video ?"))
    assert reply["frames_seen"] == 6 and reply["stream_time"] == pytest.approx(5 / 4)
    assert reply["latency_s"] >= reply["answer_s"] > 0 and reply["tokens"] >= 1


def test_a_live_source_that_disconnects_is_marked_ended(streams):
    stream = streams.add({"source": "rtsp://fake/live/5"})
    wait_for(lambda: stream.state == ENDED, what="the disconnect")
    assert "stopped delivering frames" in stream.end_message
    assert streams.ask(stream.id, Question("what is in the video ?"))["frames_seen"] >= 1


def test_frames_the_model_has_no_time_for_are_dropped_and_counted(streams):
    with streams.shared.lock:  # the model is busy: the queue of one frame overflows
        stream = streams.add({"source": "rtsp://fake/live/40", "queue_size": 1, "sample_fps": 100.0})
        wait_for(lambda: stream.queue.dropped >= 3, what="dropped frames")
    wait_for(lambda: stream.state == ENDED, what="the disconnect")
    figures = stream.describe()["figures"]
    assert figures["dropped_frames"] == stream.queue.dropped >= 3
    assert figures["frames"] + figures["dropped_frames"] == stream.capture.sampled


def test_a_failing_stream_stops_alone(streams):
    bad = streams.add({"source": "rtsp://fake/file/8", "memory_budget": 1})  # cannot hold even the window
    good = streams.add({"source": "rtsp://fake/file/3/1"})
    wait_for(lambda: bad.state == FAILED and good.state == ENDED, what="both streams")
    assert "memory_budget 1 bytes cannot hold" in bad.end_message
    assert good.describe()["figures"]["frames"] == 3


def test_removed_streams_are_gone_and_the_model_stays_patched(streams, model):
    stream = streams.add({"source": "rtsp://fake/file/2"})
    streams.remove(stream.id)
    assert stc.is_patched(model)
    with pytest.raises(NotFound):
        streams.get(stream.id)
    with pytest.raises(NotFound):
        streams.ask(stream.id, Question("what ?"))


def test_file_sources_only_under_the_media_root(streams, tmp_path):
    media = tmp_path / "media"
    write_video(media / "clip.avi", frames=4)
    write_video(tmp_path / "secret.avi", frames=4)
    os.symlink(tmp_path / "secret.avi", media / "escape.avi")
    stream = streams.add({"source": "clip.avi"})
    wait_for(lambda: stream.state == ENDED, what="the end of the clip")
    assert stream.describe()["figures"]["frames"] == 4
    for spec in ("../secret.avi", str(tmp_path / "secret.avi"), "escape.avi", "/etc/passwd"):
        with pytest.raises(Forbidden, match="outside the media root"):
            streams.add({"source": spec})
    with pytest.raises(BadRequest, match="no video file 'missing.avi'"):
        streams.add({"source": "missing.avi"})
    (media / "notes.avi").write_text("not a video")
    with pytest.raises(BadRequest, match="cannot read video notes.avi") as error:
        streams.add({"source": "notes.avi"})
    assert str(media) not in str(error.value)  # the server's folders are not told


def test_no_media_root_no_file_sources(model, tmp_path):
    write_video(tmp_path / "clip.avi")
    m = manager(model, tiny_processor())
    try:
        with pytest.raises(Forbidden, match="--media-root"):
            m.add({"source": str(tmp_path / "clip.avi")})
    finally:
        m.close()


@pytest.mark.parametrize("body, message", [
    ({}, "needs a source"),
    ([], "must be a JSON object"),
    ({"source": "rtsp://fake/file/2", "colour": 1}, "unknown field 'colour'"),
    ({"source": "rtsp://fake/file/2", "keep_ratio": 2}, "keep_ratio must be in"),
    ({"source": "rtsp://fake/file/2", "alpha": 0.2}, "alpha has no effect with method stc"),
    ({"source": "rtsp://fake/file/2", "method": "magic"}, "unknown method 'magic'"),
    ({"source": "rtsp://fake/file/2", "kv_bits": 3}, "kv_bits must be one of"),
    ({"source": "rtsp://fake/file/2", "topk": 0}, "topk must be an integer >= 1"),
    ({"source": "rtsp://fake/file/2", "queue_size": 0}, "queue_size must be an integer in"),
    ({"source": "rtsp://fake/file/2", "realtime": "yes"}, "realtime must be true or false"),
    ({"source": "rtsp://fake/file/2", "name": "../x"}, "name must be"),
    ({"source": "rtsp://fake/dead/0"}, "cannot open stream"),
    ({"source": "ftp://host/video"}, "unsupported URL scheme 'ftp'"),
    ({"source": 99}, "camera index must be in"),
    ({"source": True}, "source must be"),
    ({"source": "synthetic"}, "no synthetic stream"),
])
def test_bad_stream_requests_are_refused_with_the_reason(streams, body, message):
    with pytest.raises(BadRequest, match=message):
        streams.add(body)
    assert streams.list() == []


def test_names_and_the_stream_count_are_checked(streams):
    streams.add({"source": "rtsp://fake/file/2", "name": "a"})
    with pytest.raises(Conflict, match="a stream named 'a' exists"):
        streams.add({"source": "rtsp://fake/file/2", "name": "a"})
    streams.add({"source": "rtsp://fake/file/2"})
    streams.add({"source": "rtsp://fake/file/2"})
    with pytest.raises(Conflict, match="at most 3 streams"):
        streams.add({"source": "rtsp://fake/file/2"})


def test_the_server_budget_admits_streams_while_their_budgets_fit(model):
    m = manager(model, tiny_processor(), memory_budget=10**6, stream_budget=4 * 10**5)
    try:
        first = m.add({"source": "rtsp://fake/file/4"})
        m.add({"source": "rtsp://fake/file/4", "memory_budget": 5 * 10**5})
        with pytest.raises(Conflict, match="does not fit"):
            m.add({"source": "rtsp://fake/file/4"})
        assert m.memory()["stream_budgets"] == 9 * 10**5
        m.remove(first.id)
        m.add({"source": "rtsp://fake/file/4"})
        wait_for(lambda: all(s.state == ENDED for s in m.list()), what="the streams")
        assert all(s.describe()["figures"]["memory_bytes"] <= s.request.session.memory_budget for s in m.list())
    finally:
        m.close()


def test_stream_state_starts_live(streams):
    stream = streams.add({"source": "rtsp://fake/live/400"})
    assert stream.state == LIVE
    assert stream.describe()["state"] == LIVE
