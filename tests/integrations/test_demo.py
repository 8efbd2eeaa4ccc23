"""The live demo (`stc demo`): capture loop, frame dropping, question scheduling, overlay, headless
writer and the command end to end, with a fake camera and the tiny random LLaVA-OneVision."""

import threading
import time

import cv2
import decord
import numpy as np
import pytest

from stc.cli import main
from stc.eval.testbed import TESTBED_DIR
from stc.integrations.demo import (
    CaptureSource,
    DemoError,
    DemoOptions,
    FrameCapture,
    FrameQueue,
    QuestionSchedule,
    SourceError,
    StreamStatus,
    TimedQuestion,
    VideoFileSink,
    WindowSink,
    draw_overlay,
    kept_grid,
    open_source,
    parse_timed_question,
    read_question_file,
    run_demo,
    token_grid,
)

FRAME_HEIGHT, FRAME_WIDTH = 32, 48


class FakeCamera:
    """Mimics cv2.VideoCapture: `count` BGR frames (red, blue channel = frame number from 1), then
    failed reads (the end of a file, or a camera unplugged)."""

    def __init__(self, count: int, delay_s: float = 0.0, grey: int | None = None):
        self.count, self.delay_s, self.grey = count, delay_s, grey
        self.reads = 0
        self.released = False

    def read(self):
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.reads >= self.count:
            return False, None
        self.reads += 1
        if self.grey is not None:
            return True, np.full((FRAME_HEIGHT, FRAME_WIDTH, 3), self.grey, np.uint8)
        image = np.zeros((FRAME_HEIGHT, FRAME_WIDTH, 3), np.uint8)
        image[..., 0] = self.reads
        image[..., 2] = 200
        return True, image

    def release(self):
        self.released = True


def ticking_clock():
    """A clock that advances one second per call: live frames at t = 0, 1, 2, ..."""
    ticks = iter(range(10**6))
    return lambda: float(next(ticks))


def drain(queue: FrameQueue, delay_s: float = 0.0) -> list:
    frames = []
    while (frame := queue.get(timeout=5)) is not None:
        frames.append(frame)
        time.sleep(delay_s)
    return frames


@pytest.fixture(scope="module")
def tiny_session():
    from stc import STCConfig
    from stc.integrations.engine.session import StreamingSession
    from stc.eval.presets import build_preset

    model, processor = build_preset("llava-ov-tiny")
    with StreamingSession(model, processor, config=STCConfig(), max_new_tokens=3) as session:
        yield session


@pytest.fixture
def session(tiny_session):
    tiny_session.reset()
    return tiny_session


# -- capture loop and frame dropping ----------------------------------------------------------


def test_capture_samples_frames_at_fps_by_timestamp_and_converts_to_rgb():
    camera = FakeCamera(20)
    queue = FrameQueue(1)
    capture = FrameCapture(CaptureSource(camera, "fake.mp4", live=False, fps=10), 2.5, queue, realtime=False).start()
    frames = drain(queue)
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.4, 0.8, 1.2, 1.6])
    assert [int(f.image[0, 0, 2]) for f in frames] == [1, 5, 9, 13, 17]  # frames 0, 4, 8, ...
    assert frames[0].image[0, 0].tolist() == [200, 0, 1]  # BGR -> RGB
    assert queue.dropped == 0 and capture.sampled == 5
    assert capture.end_message == "fake.mp4: end of video"


def test_frame_queue_keeps_the_newest_frames_and_counts_drops():
    queue = FrameQueue(2)
    for i in range(5):
        assert queue.put(i)
    assert queue.dropped == 3 and len(queue) == 2
    assert queue.get(timeout=0) == 3 and queue.get(timeout=0) == 4
    assert queue.get(timeout=0.01) is None and not queue.finished
    queue.close()
    assert queue.finished and not queue.put(5)


def test_waiting_producer_is_released_by_close():
    queue = FrameQueue(1)
    queue.put("first")
    results = []
    producer = threading.Thread(target=lambda: results.append(queue.put("second", wait=True)))
    producer.start()
    time.sleep(0.05)
    assert producer.is_alive()  # no room: waits, nothing dropped
    queue.close()
    producer.join(2)
    assert results == [False] and queue.dropped == 0


def test_live_source_drops_frames_a_slow_consumer_has_no_time_for():
    camera = FakeCamera(40, delay_s=0.002)
    source = CaptureSource(camera, "camera", live=True, fps=30, clock=ticking_clock(), retry_s=0.05)
    queue = FrameQueue(1)
    capture = FrameCapture(source, 1.0, queue, realtime=False).start()  # live: real time regardless
    frames = drain(queue, delay_s=0.03)
    assert 0 < len(frames) < 40 and queue.dropped > 0
    assert len(frames) + queue.dropped == capture.sampled == 40
    stamps = [f.timestamp for f in frames]
    assert stamps == sorted(stamps) and stamps[-1] == 39.0  # the newest frame is never dropped


def test_waiting_capture_never_drops_frames_for_a_slow_consumer():
    queue = FrameQueue(1)
    FrameCapture(CaptureSource(FakeCamera(8), "file", live=False, fps=1), 1.0, queue, realtime=False).start()
    frames = drain(queue, delay_s=0.01)
    assert [f.timestamp for f in frames] == list(range(8)) and queue.dropped == 0


def test_capture_stops_while_waiting_for_room():
    queue = FrameQueue(1)
    capture = FrameCapture(CaptureSource(FakeCamera(100), "file", live=False, fps=1), 1.0, queue, realtime=False)
    capture.start()
    time.sleep(0.05)
    capture.stop()
    assert not capture.running and capture.sampled <= 2


# -- questions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("t=5:What colour is the car?", (5.0, "What colour is the car?")),
    (" t = 2.5s : how many ? ", (2.5, "how many ?")),
    ("t=0:a:b", (0.0, "a:b")),
])
def test_parse_timed_question(spec, expected):
    assert parse_timed_question(spec) == TimedQuestion(*expected)


@pytest.mark.parametrize("spec", ["5:what?", "t=:what?", "t=3:", "what?", "t=-1:what?"])
def test_parse_timed_question_rejects_bad_specs(spec):
    with pytest.raises(DemoError, match="t=SECONDS:QUESTION"):
        parse_timed_question(spec)


def test_question_file(tmp_path):
    path = tmp_path / "questions.txt"
    path.write_text("# demo questions\nt=10:What is in the video?\n\nt=2:how many ?\n")
    assert read_question_file(path) == [TimedQuestion(10.0, "What is in the video?"), TimedQuestion(2.0, "how many ?")]
    path.write_text("t=1:fine\nbroken line\n")
    with pytest.raises(DemoError, match="questions.txt:2"):
        read_question_file(path)
    with pytest.raises(DemoError, match="cannot read question file"):
        read_question_file(tmp_path / "missing.txt")


def test_schedule_hands_out_due_questions_in_time_order():
    schedule = QuestionSchedule([TimedQuestion(5, "late"), TimedQuestion(1, "first"), TimedQuestion(1, "second")])
    schedule.ask_now("typed")
    assert [q.text for q in schedule.due(0.5)] == ["typed"]
    assert [q.text for q in schedule.due(1, inclusive=False)] == []
    assert [q.text for q in schedule.due(1)] == ["first", "second"]
    assert schedule.due(4.9) == [] and len(schedule) == 1
    assert [q.text for q in schedule.remaining()] == ["late"] and len(schedule) == 0


def test_questions_are_answered_once_with_the_stream_at_their_time(session):
    source = CaptureSource(FakeCamera(8), "file", live=False, fps=1)
    schedule = QuestionSchedule([TimedQuestion(4.5, "how many ?"), TimedQuestion(2, "what is in the video ?"),
                                 TimedQuestion(100, "what is in the video ?")])
    schedule.ask_now("what colour ?")
    logged = []
    result = run_demo(session, source, schedule, DemoOptions(), log=logged.append)
    seen = [(a.question, a.asked_at, a.frames_seen, a.late) for a in result.answers]
    assert seen == [
        ("what colour ?", 0.0, 1, False),  # asked "now": after the first frame
        ("what is in the video ?", 2.0, 3, False),  # frames at 0, 1, 2 s
        ("how many ?", 4.5, 5, False),  # frames up to 4 s: answered before the 5-s frame
        ("what is in the video ?", 7.0, 8, True),  # never reached: from the whole stream
    ]
    assert result.frames == 8 and result.dropped == 0 and "end of video" in result.end_message
    assert sum("Q: " in line for line in logged) == 4 and len(schedule) == 0


class FakeHighGui:
    """OpenCV's window functions as the demo uses them, with OpenCV's keys: one pending key, which
    a newer key press replaces (the older one is lost)."""

    def __init__(self, monkeypatch):
        self.pending, self.lost = -1, []
        self.changed = threading.Condition()
        for name in ("namedWindow", "imshow", "destroyWindow"):
            monkeypatch.setattr(cv2, name, lambda *args: None)
        monkeypatch.setattr(cv2, "getWindowProperty", lambda *args: 1.0)
        monkeypatch.setattr(cv2, "waitKey", self.wait_key)

    def press(self, key: str, timeout: float = 0.2) -> None:
        """Press a key, then give the window up to `timeout` seconds to read it."""
        with self.changed:
            if self.pending != -1:
                self.lost.append(chr(self.pending))
            self.pending = ord(key)
            self.changed.wait_for(lambda: self.pending == -1, timeout)

    def wait_key(self, delay: int = 0) -> int:
        with self.changed:
            key, self.pending = self.pending, -1
            self.changed.notify_all()
            return key


class TypingSession:
    """A session during whose first ingested frame the user types `keys` in the window."""

    def __init__(self, session, gui: FakeHighGui, keys: str):
        self.session, self.gui, self.keys = session, gui, keys

    def append_frames(self, *args, **kwargs):
        for key in self.keys:
            self.gui.press(key)
        self.keys = ""
        return self.session.append_frames(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_keys_typed_in_the_window_while_the_model_works_are_all_read(session, monkeypatch):
    gui = FakeHighGui(monkeypatch)
    schedule = QuestionSchedule()
    window = WindowSink("test", schedule.ask_now)
    source = CaptureSource(FakeCamera(3), "file", live=False, fps=1)
    result = run_demo(TypingSession(session, gui, "/what is here\r"), source, schedule, DemoOptions(), window=window,
                      log=lambda line: None)
    assert gui.lost == [] and [a.question for a in result.answers] == ["what is here"]


# -- overlay and headless writer ----------------------------------------------------------------


@pytest.mark.parametrize("tokens, aspect, grid", [(16, 1.0, (4, 4)), (16, 4 / 3, (4, 4)), (576, 16 / 9, (18, 32)),
                                                  (6, 1.5, (2, 3)), (1, 1.0, (1, 1))])
def test_token_grid(tokens, aspect, grid):
    assert token_grid(tokens, aspect) == grid


def test_heatmap_tints_kept_tokens_and_darkens_pruned_ones():
    frame = np.full((96, 96, 3), 128, np.uint8)
    status = StreamStatus(source="test", sample_fps=1.0, kept_grid=kept_grid([0, 3], 4, 1.0))
    assert status.kept_grid.tolist() == [[True, False], [False, True]]
    plain = draw_overlay(frame, status, heatmap=False)
    heat = draw_overlay(frame, status, heatmap=True)
    assert plain.shape == heat.shape == (480, 480, 3)
    kept, pruned = heat[360, 360].astype(int), heat[360, 120].astype(int)  # cells (1, 1) and (1, 0)
    assert kept[1] > plain[360, 360, 1] and kept[1] > kept[2]  # green tint (BGR)
    assert (pruned < plain[360, 120]).all()  # darkened
    assert (plain[400:] == 128).all()  # no question yet: the bottom of the picture is untouched


def test_headless_writer_writes_a_readable_annotated_mp4(session, tmp_path):
    path = tmp_path / "out" / "demo.mp4"
    writer = VideoFileSink(path, fps=1.0)
    source = CaptureSource(FakeCamera(6, grey=200), "file", live=False, fps=1)
    schedule = QuestionSchedule([TimedQuestion(3, "what is in the video ?")])
    result = run_demo(session, source, schedule, DemoOptions(), sinks=[writer], log=lambda line: None)
    writer.close()
    assert result.frames == 6 and writer.frames_written == 6
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    assert len(frames) == 6 and frames[0].shape == (480, 720, 3)
    assert len(decord.VideoReader(str(path))) == 6
    raw = np.full((480, 720, 3), 200, np.int16)
    stats_area = np.abs(frames[0][:120, :300].astype(np.int16) - raw[:120, :300]).mean()
    answer_area = np.abs(frames[5][-40:].astype(np.int16) - raw[-40:]).mean()
    question_free = np.abs(frames[0][-40:].astype(np.int16) - raw[-40:]).mean()  # before the question
    assert stats_area > 40 and answer_area > 40 and question_free < 10


# -- sources and the command ----------------------------------------------------------------------


def test_camera_disconnect_ends_the_stream_with_a_message(session):
    camera = FakeCamera(5)
    source = CaptureSource(camera, "camera 0", live=True, fps=30, clock=ticking_clock(), retry_s=0.05)
    logged = []
    result = run_demo(session, source, QuestionSchedule(), DemoOptions(), log=logged.append)
    assert "camera 0 stopped delivering frames" in result.end_message
    assert 1 <= result.frames <= 5 and result.frames + result.dropped == 5
    assert any("stopped delivering frames" in line for line in logged)
    source.close()
    assert camera.released


def test_live_source_starts_its_stream_when_reading_starts():
    source = CaptureSource(FakeCamera(3), "camera 0", live=True, fps=30, clock=ticking_clock(), retry_s=0.01)
    source.prime()  # checks that the camera delivers; that frame is stale once the model is loaded
    assert source.read()[1] == 0.0 and source.read()[1] == 1.0
    assert source.read() is None and "stopped delivering frames" in source.end_message


def test_unopenable_sources_raise_source_errors(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_text("not a video")
    with pytest.raises(SourceError, match="video file not found"):
        open_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(SourceError, match="cannot read video"):
        open_source(str(garbage))
    with pytest.raises(SourceError, match="cannot open camera 57"):
        open_source("57")


@pytest.mark.parametrize("arguments, message", [
    (["--source", "/no/such/video.mp4"], "video file not found: /no/such/video.mp4"),
    (["--ask", "what is it?"], "t=SECONDS:QUESTION"),
])
def test_command_reports_unusable_inputs_with_exit_code_2(arguments, message, tmp_path, capsys):
    assert main(["demo", "--headless", "--out", str(tmp_path / "x.mp4"), *arguments]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists()


def test_a_file_that_is_no_video_is_one_line_on_stderr(tmp_path, capfd):
    """FFmpeg writes "moov atom not found" straight to file descriptor 2 when OpenCV probes such a
    file: capfd sees that descriptor, so the line would show up here."""
    bad = tmp_path / "bad.mp4"
    bad.write_text("these are text bytes, not a video\n" * 20)
    assert main(["demo", "--headless", "--out", str(tmp_path / "x.mp4"), "--source", str(bad)]) == 2
    err = capfd.readouterr().err
    assert err.splitlines() == [f"stc demo: error: cannot read video {bad}: not a video OpenCV can decode"]


def test_command_headless_on_the_synthetic_stream(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    code = main(["demo", "--headless", "--model", "llava-ov-tiny", "--out", str(out), "--duration", "5", "--heatmap",
                 "--max-new-tokens", "3", "--ask", "t=1:what is in the video ?", "--ask", "t=3:how many ?"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "source: the built-in synthetic stream" in printed
    assert "[t=1.0s, 2 frames] Q: what is in the video ?" in printed
    assert "[t=3.0s, 4 frames] Q: how many ?" in printed
    assert printed.count("    A: ") == 2
    assert "reached --duration 5 s" in printed and f"wrote {out} (5 frames at 1 fps)" in printed
    assert len(decord.VideoReader(str(out))) == 5
    assert "only knows the synthetic benchmark's world" not in printed


@pytest.mark.skipif(not (TESTBED_DIR / "config.json").exists(), reason="testbed model not trained")
def test_command_says_what_the_testbed_model_knows_on_a_real_video(tmp_path, capsys):
    from stc.eval.synthetic.episodes import COUNT_QUESTIONS, QUESTIONS

    video = tmp_path / "real.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 1, (64, 48))
    for _ in range(3):
        writer.write(np.full((48, 64, 3), 90, np.uint8))
    writer.release()
    code = main(["demo", "--headless", "--out", str(tmp_path / "demo.mp4"), "--source", str(video), "--max-frames", "1"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "note: the shipped testbed model only knows the synthetic benchmark's world" in printed
    assert f"its answers about {video.name} mean little" in printed
    for question in ("how many objects are visible now?", COUNT_QUESTIONS["objects"][0]):
        assert f"  Question: {question} Answer with a number." in printed
    forms = [line for line in printed.splitlines() if line.startswith("  Question: ")]
    assert len(forms) == len(QUESTIONS) + 1  # one of each kind, counts so far being one kind


def test_command_without_a_display_runs_headless(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--model", "llava-ov-tiny", "--max-frames", "2"]) == 0
    printed = capsys.readouterr().out
    assert "no display (DISPLAY is not set): running headless and writing stc-demo.mp4" in printed
    assert (tmp_path / "stc-demo.mp4").exists()


def test_default_model_is_the_testbed_else_the_tiny_preset(tmp_path, monkeypatch):
    from stc.cli.demo import default_model

    monkeypatch.setattr("stc.eval.testbed.TESTBED_DIR", tmp_path)
    name, note = default_model()
    assert name == "llava-ov-tiny" and "not in" in note and str(tmp_path) in note
    (tmp_path / "config.json").write_text("{}")
    assert default_model() == (str(tmp_path), None)


def test_status_lines_show_what_stc_saves():
    status = StreamStatus(source="camera 0", sample_fps=2.0, timestamp=3.5, frames=8, ingest_fps=1.9,
                          vit_ms_per_frame=12.3, vit_reuse=0.71, encode_ms_per_frame=30.4, resize_ms_per_frame=9.6,
                          tokens_in_per_frame=196, tokens_kept_per_frame=59, memory_bytes=3 * 2**20, dropped=4)
    assert status.lines() == [
        "camera 0   t=3.5s   frame 8",
        "ingestion 1.9 fps (sampling 2 fps)",
        "ViT 12.3 ms/frame, 71% of tokens reused",
        "encoding 30.4 ms/frame (resize 9.6 + ViT + selection)",
        "LLM tokens kept 59 of 196 per frame",
        "stream memory 3.00 MiB",
        "dropped frames 4",
    ]
    status.memory_budget, status.evicted = 4 * 2**20, 12
    assert status.lines()[5] == "stream memory 3.00 MiB of 4.00 MiB budget (75%), 12 blocks evicted"


# -- the package's place in the layers ------------------------------------------------------------


def imports_of(path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module or "")
    return found


def test_the_demo_has_no_command_line_and_the_synthetic_source_no_demo():
    from pathlib import Path

    import stc.eval.synthetic.source
    import stc.integrations.demo

    modules = sorted(Path(stc.integrations.demo.__file__).parent.glob("*.py"))
    assert {m.stem for m in modules} >= {"sources", "questions", "overlay", "sinks", "loop"}
    for module in modules:  # argparse and the CLI live in stc.cli.demo
        assert not {i for i in imports_of(module) if i.split(".")[0] == "argparse" or i.startswith("stc.cli")}, module
    assert not {i for i in imports_of(Path(stc.eval.synthetic.source.__file__)) if i.startswith("stc.integrations.demo")}


def test_the_vit_time_shown_is_the_vision_tower_s_apart_from_resizing_and_warm_up(session):
    """The overlay's ViT figure is the session's stage timer's "vit" (as in `stc bench`); the
    whole encoding (IngestReport.encode_s), which includes resizing the source's frames, is a line
    of its own; the first frame (the model's warm-up) leaves the means once a second frame came."""
    from stc.integrations.demo.loop import _RecentMean

    logged = []
    source = CaptureSource(FakeCamera(3, grey=90), "file", live=False, fps=1)
    run_demo(session, source, QuestionSchedule(), DemoOptions(status_every=1), log=logged.append)
    status = [line for line in logged if "ViT" in line]
    assert len(status) == 3 and not session.timer.enabled  # the timer is left as it was
    for line in status:
        vit = float(line.split("ViT ")[1].split(" ms/frame")[0])
        encode = float(line.split("encoding ")[1].split(" ms/frame")[0])
        resize = float(line.split("(resize ")[1].split(" + ViT")[0])
        assert vit > 0 and resize > 0 and encode >= vit + resize - 0.1  # rounding to 0.1 ms
    mean = _RecentMean(size=2)
    assert [mean.add(v) for v in (50.0, 10.0, 20.0, 30.0)] == [50.0, 10.0, 15.0, 25.0]
