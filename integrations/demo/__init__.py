"""Live demo core: watch a source, ask questions at any time, show what STC saves.

Pieces, each usable on its own (the `stc demo` command, `stc.cli.demo`, wires them together):
- sources: a camera index, a video file or stream URL (`CaptureSource` over cv2.VideoCapture),
  or a synthetic stream given as an argument (the command passes the testbed's endless stream,
  `stc.eval.synthetic.source.SyntheticSource`: the demo imports nothing from eval);
  `open_source(spec, synthetic=...)` picks one;
- `FrameCapture`: a thread that reads the source, samples frames at the requested fps by their
  timestamps and puts them into a `FrameQueue` of one or two frames;
- `QuestionSchedule`: questions waiting for their stream time (`t=5:question`), or asked now;
- `draw_overlay`: the frame scaled for display with the stream's numbers, an optional heat map
  of the tokens the Pruner kept and the last question and answer;
- sinks: `VideoFileSink` (mp4) and `WindowSink` (an OpenCV window that also takes typed
  questions);
- `run_demo`: the loop that ingests frames into a `StreamingSession`, answers due questions
  (capture goes on meanwhile, and with a window the model works on a thread of its own while the
  window's keys are read) and shows or writes every annotated frame.

Timing: live sources (cameras, stream URLs), and files played in real time, never wait for the
model: when the queue is full its oldest frame is dropped and counted, so memory stays bounded
and the picture stays current. Headless playback of a file or of the synthetic stream instead
waits for the model, so the same command writes the same video on any machine.

cv2, torch and the synthetic benchmark are imported inside functions, so that importing this
module (the `stc` command does, to list its subcommands) stays cheap.
"""

from __future__ import annotations

from stc.errors import InputError

import contextlib
import heapq
import itertools
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SYNTHETIC = "synthetic"
CAMERA_RETRY_S = 2.0  # a live source that gives no frame for this long is taken as disconnected
FALLBACK_FPS = 25.0  # when a file or camera does not say its frame rate
STREAM_SCHEMES = ("rtsp", "rtmp", "udp", "tcp", "http", "https")


class DemoError(InputError):
    """Something the demo cannot work with (a source, a question, an output file), with the reason."""


class SourceError(DemoError):
    """A source that cannot be opened or read."""


@dataclass
class SampledFrame:
    image: np.ndarray  # [H, W, 3] uint8 RGB
    timestamp: float  # stream seconds


# -- sources ----------------------------------------------------------------------------------


def _bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:  # grey cameras
        return np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., 2::-1])


class CaptureSource:
    """Frames from a cv2.VideoCapture-like object: anything with `read() -> (ok, BGR image)`.

    live=False (a file): frame i is at i / fps seconds and a failed read is the end of the video.
    live=True (a camera or stream): frames are timed by `clock` from the first one, and a source
    that delivers nothing for `retry_s` seconds (wall clock) is taken as disconnected.
    """

    def __init__(self, capture, name: str, live: bool, fps: float, clock: Callable[[], float] = time.monotonic,
                 retry_s: float = CAMERA_RETRY_S):
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        self.capture, self.name, self.live, self.fps = capture, name, live, float(fps)
        self.clock, self.retry_s = clock, retry_s
        self.end_message = f"{name}: end of video" if not live else f"{name}: stream ended"
        self._frames_read = 0
        self._start: float | None = None
        self._pending: tuple[np.ndarray, float] | None = None

    def _read_image(self) -> np.ndarray | None:
        ok, image = self.capture.read()
        if ok and image is not None:
            return image
        if not self.live:
            return None
        deadline = time.monotonic() + self.retry_s
        while time.monotonic() < deadline:
            time.sleep(min(0.02, self.retry_s))
            ok, image = self.capture.read()
            if ok and image is not None:
                return image
        self.end_message = f"{self.name} stopped delivering frames for {self.retry_s:g} s (disconnected?)"
        return None

    def _next(self) -> tuple[np.ndarray, float] | None:
        image = self._read_image()
        if image is None:
            return None
        if self.live:
            now = self.clock()
            self._start = now if self._start is None else self._start
            timestamp = now - self._start
        else:
            timestamp = self._frames_read / self.fps
        self._frames_read += 1
        return _bgr_to_rgb(image), timestamp

    def prime(self) -> None:
        """Read a first frame now, SourceError if the source gives none. A file's frame is kept
        for `read`; a live one is stale by the time reading starts, so the stream starts later."""
        self._pending = self._next()
        if self._pending is None:
            raise SourceError(f"{self.name} delivers no frames")
        if self.live:
            self._pending, self._start = None, None

    def read(self) -> tuple[np.ndarray, float] | None:
        """(RGB frame, stream seconds), or None at the end (`end_message` says why)."""
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        return self._next()

    def close(self) -> None:
        release = getattr(self.capture, "release", None)
        if release is not None:
            release()


def parse_source(spec: str) -> int | str:
    """A camera index (an integer), SYNTHETIC, or a file path / URL."""
    spec = str(spec).strip()
    if re.fullmatch(r"\d+", spec):
        return int(spec)
    return spec


@contextlib.contextmanager
def _quiet_opencv():
    """OpenCV's own logging off inside the block (opening a missing camera logs several lines)."""
    import cv2

    logging = getattr(cv2.utils, "logging", None)  # OpenCV 5; OpenCV 4 has the calls on cv2 itself
    get_level, set_level = (logging.getLogLevel, logging.setLogLevel) if logging else (cv2.getLogLevel, cv2.setLogLevel)
    level = get_level()
    set_level(0)  # LOG_LEVEL_SILENT in both
    try:
        yield
    finally:
        set_level(level)


def open_source(spec: str | int, clock: Callable[[], float] = time.monotonic, synthetic: Callable[[], object] | None = None):
    """The source a --source value names, with its first frame read; SourceError if unusable.
    `synthetic` makes the source that --source synthetic names (a `read()`/`close()` object with
    `live`, `fps`, `name` and `end_message`, like `CaptureSource`)."""
    spec = parse_source(spec) if isinstance(spec, str) else spec
    if spec == SYNTHETIC:
        if synthetic is None:
            raise SourceError("no synthetic stream was given to open_source (the stc demo command passes one)")
        return synthetic()
    import cv2

    if isinstance(spec, int):
        name, live, failure = f"camera {spec}", True, f"cannot open camera {spec}: no camera at that index, or it is in use"
    elif "://" in spec and spec.split("://", 1)[0].lower() in STREAM_SCHEMES:
        name, live, failure = f"stream {spec}", True, f"cannot open stream {spec}"
    else:
        if not os.path.exists(spec):
            raise SourceError(f"video file not found: {spec}")
        name, live, failure = Path(spec).name, False, f"cannot read video {spec}: not a video OpenCV can decode"
    with _quiet_opencv():
        capture = cv2.VideoCapture(spec)
    if not capture.isOpened():
        raise SourceError(failure)
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and 0 < fps < 1000 else FALLBACK_FPS
    source = CaptureSource(capture, name, live, fps, clock=clock)
    try:
        source.prime()
    except SourceError:
        source.close()
        raise
    return source


# -- frame queue and capture thread -----------------------------------------------------------


class FrameQueue:
    """At most `capacity` frames. A full queue drops its oldest frame for the new one (newest
    wins, counted in `dropped`) unless the producer asks to wait for room."""

    def __init__(self, capacity: int = 1):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1, got {capacity!r}")
        self.capacity = capacity
        self.dropped = 0
        self._frames: deque = deque()
        self._closed = False
        self._changed = threading.Condition()

    def put(self, frame, wait: bool = False) -> bool:
        """Add a frame (waiting for room if `wait`); False once the queue is closed."""
        with self._changed:
            while wait and len(self._frames) >= self.capacity and not self._closed:
                self._changed.wait()
            if self._closed:
                return False
            if len(self._frames) >= self.capacity:
                self._frames.popleft()
                self.dropped += 1
            self._frames.append(frame)
            self._changed.notify_all()
            return True

    def get(self, timeout: float | None = None):
        """The oldest frame, or None if none came within `timeout` or the queue is finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._frames and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._changed.wait(remaining)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._changed.notify_all()
            return frame

    def close(self) -> None:
        """No more frames: waiting producers and consumers return; queued frames can still be got."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def finished(self) -> bool:
        with self._changed:
            return self._closed and not self._frames

    def __len__(self) -> int:
        with self._changed:
            return len(self._frames)


class FrameCapture:
    """Reads a source on its own thread and queues the frames sampled at `fps`: the first frame
    at or after each instant k / fps of stream time.

    realtime=True: file and synthetic playback is paced to the wall clock and frames never wait
    for the consumer (a slow model drops frames); live sources are always read this way.
    realtime=False: each sampled frame waits for room in the queue, so none is dropped.
    """

    def __init__(self, source, fps: float, queue: FrameQueue, realtime: bool):
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        self.source, self.fps, self.queue = source, float(fps), queue
        self.realtime = realtime or source.live
        self.sampled = 0
        self.end_message: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stc-demo-capture", daemon=True)

    def start(self) -> FrameCapture:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading and close the queue (a frame being read is finished first)."""
        self._stop.set()
        self.queue.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._capture()
        except Exception as exc:  # a source failing mid-stream ends the stream with its reason
            self.end_message = f"reading {self.source.name} failed: {exc}"
        finally:
            self.queue.close()

    def _capture(self) -> None:
        next_sample: float | None = None
        clock_offset: float | None = None  # wall clock minus stream time, for real-time playback
        while not self._stop.is_set():
            item = self.source.read()
            if item is None:
                self.end_message = self.source.end_message
                return
            image, timestamp = item
            if next_sample is not None and timestamp < next_sample - 1e-6:
                continue
            next_sample = (math.floor(timestamp * self.fps + 1e-6) + 1) / self.fps
            if self.realtime and not self.source.live:
                clock_offset = time.monotonic() - timestamp if clock_offset is None else clock_offset
                if self._stop.wait(max(0.0, clock_offset + timestamp - time.monotonic())):
                    break
            if not self.queue.put(SampledFrame(image, timestamp), wait=not self.realtime):
                break
            self.sampled += 1
        self.end_message = "stopped"


# -- questions --------------------------------------------------------------------------------

_TIMED_QUESTION = re.compile(r"^\s*t\s*=\s*(\d+(?:\.\d*)?|\.\d+)\s*s?\s*:\s*(.*\S)\s*$")


@dataclass(frozen=True)
class TimedQuestion:
    time: float  # stream seconds from which it is due (-inf: at once)
    text: str


def parse_timed_question(spec: str) -> TimedQuestion:
    """`t=5:What colour is the car?` -> TimedQuestion(5.0, "What colour is the car?")."""
    match = _TIMED_QUESTION.match(spec)
    if match is None:
        raise DemoError(f"cannot read question {spec!r}: write it as t=SECONDS:QUESTION, e.g. \"t=5:What is in the video?\"")
    return TimedQuestion(float(match.group(1)), match.group(2))


def read_question_file(path: str | os.PathLike) -> list[TimedQuestion]:
    """One `t=SECONDS:QUESTION` per line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DemoError(f"cannot read question file {path}: {exc.strerror or exc}") from exc
    questions = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                questions.append(parse_timed_question(line))
            except DemoError as exc:
                raise DemoError(f"{path}:{number}: {exc}") from exc
    return questions


class QuestionSchedule:
    """Questions waiting for their stream time, handed out in time order (then in the order they
    were added). Thread-safe: questions typed in a terminal or window arrive from other threads."""

    def __init__(self, questions: Iterable[TimedQuestion] = ()):
        self._heap: list[tuple[float, int, TimedQuestion]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()
        for question in questions:
            self.add(question)

    def add(self, question: TimedQuestion) -> None:
        with self._lock:
            heapq.heappush(self._heap, (question.time, next(self._order), question))

    def ask_now(self, text: str) -> None:
        """A question due at once (answered after the next ingested frame)."""
        if text.strip():
            self.add(TimedQuestion(-math.inf, text.strip()))

    def due(self, stream_time: float, inclusive: bool = True) -> list[TimedQuestion]:
        """Remove and return the questions whose time is <= stream_time (< if not inclusive)."""
        with self._lock:
            out = []
            while self._heap and (self._heap[0][0] <= stream_time if inclusive else self._heap[0][0] < stream_time):
                out.append(heapq.heappop(self._heap)[2])
            return out

    def remaining(self) -> list[TimedQuestion]:
        """Remove and return every question left."""
        return self.due(math.inf)

    def __len__(self) -> int:
        with self._lock:
            return len(self._heap)


# -- overlay ----------------------------------------------------------------------------------


@dataclass
class DemoAnswer:
    question: str
    asked_at: float  # stream seconds: the question's time, or when it was answered if asked "now"
    frames_seen: int
    text: str
    seconds: float  # time to answer
    late: bool = False  # its time was after the end of the stream: answered from all of it


@dataclass
class StreamStatus:
    """What the overlay shows, updated after every ingested frame."""

    source: str
    sample_fps: float
    timestamp: float = 0.0
    frames: int = 0
    ingest_fps: float = 0.0
    vit_ms_per_frame: float = 0.0
    vit_reuse: float = 0.0  # share of ViT tokens reused by the Cacher so far
    tokens_in_per_frame: float = 0.0
    tokens_kept_per_frame: float = 0.0
    memory_bytes: int = 0
    memory_budget: int | None = None  # bytes (StreamingSession's memory_budget), None: unbounded
    evicted: int = 0  # blocks evicted to stay within the budget
    dropped: int = 0
    kept_grid: np.ndarray | None = None  # bool [rows, cols] for the last frame; None: all kept
    answer: DemoAnswer | None = None
    typing: str | None = None  # a question being typed in the window

    def lines(self) -> list[str]:
        return [
            f"{self.source}   t={self.timestamp:.1f}s   frame {self.frames}",
            f"ingestion {self.ingest_fps:.1f} fps (sampling {self.sample_fps:g} fps)",
            f"ViT {self.vit_ms_per_frame:.1f} ms/frame, {self.vit_reuse:.0%} of tokens reused",
            f"LLM tokens kept {self.tokens_kept_per_frame:.0f} of {self.tokens_in_per_frame:.0f} per frame",
            self._memory_line(),
            f"dropped frames {self.dropped}",
        ]


    def _memory_line(self) -> str:
        line = f"stream memory {_format_bytes(self.memory_bytes)}"
        if self.memory_budget is None:
            return line
        return (f"{line} of {_format_bytes(self.memory_budget)} budget ({self.memory_bytes / self.memory_budget:.0%}), "
                f"{self.evicted} blocks evicted")


def _format_bytes(count: int) -> str:
    return f"{count / 2**20:.2f} MiB" if count >= 2**20 else f"{count / 2**10:.1f} KiB"


def token_grid(tokens: int, aspect: float) -> tuple[int, int]:
    """(rows, cols) with rows * cols = tokens whose shape is closest to width / height = aspect:
    sqrt(n) x sqrt(n) for LLaVA-OneVision's square pooled grid, h x w for Qwen-VL's merged grid."""
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    pairs = [(rows, tokens // rows) for rows in range(1, tokens + 1) if tokens % rows == 0]
    return min(pairs, key=lambda rc: (abs(math.log(rc[1] / rc[0]) - math.log(aspect)), rc[0]))


def kept_grid(kept_positions, tokens: int, aspect: float) -> np.ndarray:
    """bool [rows, cols]: which of a frame's `tokens` grid cells the Pruner kept."""
    rows, cols = token_grid(tokens, aspect)
    grid = np.zeros(rows * cols, dtype=bool)
    grid[np.asarray(kept_positions, dtype=np.int64)] = True
    return grid.reshape(rows, cols)


_FONT_SCALE = 0.5
_LINE_HEIGHT = 20
_MARGIN = 8
_WHITE, _YELLOW, _GREEN, _CYAN, _RED = (255, 255, 255), (0, 230, 255), (120, 255, 120), (255, 230, 0), (80, 80, 255)  # BGR


def wrap_text(text: str, width_px: int) -> list[str]:
    """Greedy word wrap of `text` to lines at most `width_px` wide in the overlay font."""
    import cv2

    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, 1)[0][0] > width_px:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _first_lines(lines: list[str], count: int) -> list[str]:
    """At most `count` lines, the last ending in "..." when some were cut."""
    return lines if len(lines) <= count else lines[: count - 1] + [lines[count - 1] + " ..."]


def _panel(image: np.ndarray, top: int, bottom: int, lines: list[tuple[str, tuple]], fit_width: bool = False,
           opacity: float = 0.6) -> None:
    """Text lines (text, BGR colour) on a translucent dark band between rows top and bottom, as
    wide as the image or (fit_width) as the longest line."""
    import cv2

    top, bottom = max(0, top), min(image.shape[0], bottom)
    right = image.shape[1]
    if fit_width:
        text_width = max(cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, 1)[0][0] for text, _ in lines)
        right = min(right, text_width + 2 * _MARGIN)
    band = image[top:bottom, :right]
    band[:] = (band * (1 - opacity)).astype(np.uint8)
    for i, (text, colour) in enumerate(lines):
        y = top + _MARGIN + 12 + i * _LINE_HEIGHT
        cv2.putText(image, text, (_MARGIN, y), cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, colour, 1, cv2.LINE_AA)


def _draw_heatmap(image: np.ndarray, grid: np.ndarray) -> None:
    """Kept cells tinted green, pruned cells darkened, thin cell borders."""
    import cv2

    rows, cols = grid.shape
    height, width = image.shape[:2]
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    xs = np.linspace(0, width, cols + 1).round().astype(int)
    tint = image.copy()
    for r in range(rows):
        for c in range(cols):
            cell = tint[ys[r] : ys[r + 1], xs[c] : xs[c + 1]]
            cell[:] = (0, 200, 0) if grid[r, c] else (0, 0, 0)
    cv2.addWeighted(tint, 0.35, image, 0.65, 0, dst=image)
    for y in ys[1:-1]:
        cv2.line(image, (0, int(y)), (width - 1, int(y)), (90, 90, 90), 1)
    for x in xs[1:-1]:
        cv2.line(image, (int(x), 0), (int(x), height - 1), (90, 90, 90), 1)


def display_size(height: int, width: int, display_height: int) -> tuple[int, int]:
    """(height, width) of the shown picture: `display_height` tall, aspect kept, even sizes."""
    scale = display_height / height
    return 2 * round(display_height / 2), max(2, 2 * round(width * scale / 2))


def draw_overlay(frame: np.ndarray, status: StreamStatus, heatmap: bool = False, display_height: int = 480) -> np.ndarray:
    """The RGB frame scaled to `display_height` with the overlay, as a BGR image (OpenCV's order)."""
    import cv2

    height, width = display_size(frame.shape[0], frame.shape[1], display_height)
    upscale = height >= 2 * frame.shape[0]
    image = cv2.resize(np.ascontiguousarray(frame[..., ::-1]), (width, height), interpolation=cv2.INTER_NEAREST if upscale else cv2.INTER_AREA)
    if heatmap and status.kept_grid is not None:
        _draw_heatmap(image, status.kept_grid)
    stats = [(line, _WHITE) for line in status.lines()]
    if status.dropped:
        stats[-1] = (stats[-1][0], _RED)
    if heatmap:
        stats.append(("heat map: green = kept for the LLM" if status.kept_grid is not None else "heat map: every token kept", _GREEN))
    _panel(image, 0, 2 * _MARGIN + _LINE_HEIGHT * len(stats), stats, fit_width=True)
    qa: list[tuple[str, tuple]] = []
    text_width = width - 2 * _MARGIN
    if status.answer is not None:
        answer = status.answer
        when = "end of stream" if answer.late else f"t={answer.asked_at:.1f}s"
        question = wrap_text(f"Q ({when}): {answer.question}", text_width)
        reply = wrap_text(f"A: {answer.text or '(empty answer)'}  [{1000 * answer.seconds:.0f} ms]", text_width)
        qa += [(line, _YELLOW) for line in _first_lines(question, 3)] + [(line, _GREEN) for line in _first_lines(reply, 3)]
    if status.typing is not None:
        qa.append((f"ask> {status.typing}_", _CYAN))
    if qa:
        _panel(image, height - 2 * _MARGIN - _LINE_HEIGHT * len(qa), height, qa)
    return image


# -- sinks ------------------------------------------------------------------------------------


class VideoFileSink:
    """Writes annotated BGR frames to an mp4 (mp4v codec) at `fps`; opened on the first frame."""

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path, self.fps = Path(path), float(fps)
        self.frames_written = 0
        self._writer = None

    def show(self, image: np.ndarray) -> bool:
        import cv2

        if self._writer is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DemoError(f"cannot create the folder of {self.path}: {exc.strerror or exc}") from exc
            height, width = image.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if not self._writer.isOpened():
                raise DemoError(f"cannot write video {self.path} (OpenCV has no mp4v writer for it)")
        self._writer.write(image)
        self.frames_written += 1
        return True

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class WindowSink:
    """An OpenCV window. Keys: q or Esc quit; / or Enter starts typing a question in the window,
    Enter asks it, Esc cancels, Backspace deletes. Closing the window quits too. OpenCV keeps only
    the last key pressed since the previous `poll`, so `run_demo` polls every few ms, also while
    the model works."""

    def __init__(self, title: str, on_question: Callable[[str], None]):
        import cv2

        self.title, self.on_question = title, on_question
        self.typing: str | None = None
        self._shown = False  # the window is checked for being closed once it has shown a frame
        cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)

    def show(self, image: np.ndarray) -> bool:
        import cv2

        cv2.imshow(self.title, image)
        self._shown = True
        return self.poll()

    def poll(self) -> bool:
        """Handle pending keys; False when the user asked to quit."""
        import cv2

        while (key := cv2.waitKey(1)) != -1:
            if not self._handle_key(key & 0xFF):
                return False
        return not (self._shown and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1)

    def _handle_key(self, key: int) -> bool:
        """Apply one key press; False for quit."""
        if self.typing is None:
            if key in (ord("q"), 27):
                return False
            if key in (ord("/"), 13, 10):
                self.typing = ""
        elif key in (13, 10):
            self.on_question(self.typing)
            self.typing = None
        elif key == 27:
            self.typing = None
        elif key in (8, 127):
            self.typing = self.typing[:-1]
        elif 32 <= key < 127:
            self.typing += chr(key)
        return True

    def close(self) -> None:
        import cv2

        cv2.destroyWindow(self.title)
        cv2.waitKey(1)


# -- the loop ---------------------------------------------------------------------------------


@dataclass
class DemoOptions:
    sample_fps: float = 1.0
    realtime: bool = False  # pace files and the synthetic stream to the wall clock (window mode)
    max_frames: int | None = None  # stop after this many ingested frames
    duration: float | None = None  # stop at this stream time (seconds)
    heatmap: bool = False
    max_new_tokens: int = 16
    display_height: int = 480
    queue_size: int = 1
    status_every: int = 10  # print a status line every N ingested frames (0: never)


@dataclass
class DemoResult:
    frames: int  # ingested
    dropped: int
    end_message: str
    answers: list[DemoAnswer] = field(default_factory=list)
    stopped_by_user: bool = False


class _RecentMean:
    """Mean of the last `size` values."""

    def __init__(self, size: int = 10):
        self.values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> float:
        self.values.append(value)
        return sum(self.values) / len(self.values)


class _DemoLoop:
    """State of one `run_demo` call: ingests frames, answers questions, renders."""

    def __init__(self, session, source, schedule: QuestionSchedule, options: DemoOptions, sinks: list, window,
                 log: Callable[[str], None]):
        self.session, self.source, self.schedule, self.options = session, source, schedule, options
        self.sinks, self.window, self.log = sinks, window, log
        self.queue = FrameQueue(options.queue_size)
        self.capture = FrameCapture(source, options.sample_fps, self.queue, options.realtime)
        self.status = StreamStatus(source=source.name, sample_fps=options.sample_fps)
        self.answers: list[DemoAnswer] = []
        self.last_frame: np.ndarray | None = None
        self._ingest_times: deque[float] = deque(maxlen=10)
        self._vit_ms = _RecentMean()

    def ingest(self, frame: SampledFrame) -> None:
        report = self.session.append_frames(frame.image[None], timestamps=[frame.timestamp])
        self._ingest_times.append(time.perf_counter())
        status = self.status
        status.source, status.timestamp, status.frames = self.source.name, frame.timestamp, status.frames + report.frames
        if len(self._ingest_times) > 1:
            status.ingest_fps = (len(self._ingest_times) - 1) / max(self._ingest_times[-1] - self._ingest_times[0], 1e-9)
        status.vit_ms_per_frame = self._vit_ms.add(1000 * report.encode_s / max(report.frames, 1))
        state = self.session.state
        status.vit_reuse = state.stats.as_dict()["vit_reuse_ratio"]
        status.tokens_in_per_frame = report.tokens_in / max(report.frames, 1)
        status.tokens_kept_per_frame = report.tokens_kept / max(report.frames, 1)
        memory = self.session.memory()
        status.memory_bytes = memory["total_bytes"]
        status.memory_budget, status.evicted = memory["memory_budget"], memory["evicted_blocks"]
        status.kept_grid = self._kept_grid(report, frame.image)
        self.last_frame = frame.image

    def _kept_grid(self, report, image: np.ndarray) -> np.ndarray | None:
        """The last frame's kept tokens on its grid; None when the Pruner kept everything."""
        if not report.kept or report.tokens_kept >= report.tokens_in:
            return None
        blocks = math.ceil(report.frames / self.session.frames_per_block)
        tokens_per_block = report.tokens_in // max(blocks, 1)
        return kept_grid(report.kept[-1].cpu().numpy(), tokens_per_block, image.shape[1] / image.shape[0])

    def answer(self, question: TimedQuestion, late: bool = False) -> DemoAnswer:
        started = time.perf_counter()
        reply = self.session.ask(question.text, max_new_tokens=self.options.max_new_tokens)
        asked_at = question.time if math.isfinite(question.time) and not late else self.status.timestamp
        answer = DemoAnswer(question.text, asked_at, reply.frames_seen, reply.text, time.perf_counter() - started, late)
        self.answers.append(answer)
        self.status.answer = answer
        when = "end of stream" if late else f"t={answer.asked_at:.1f}s"
        self.log(f"[{when}, {answer.frames_seen} frames] Q: {answer.question}")
        self.log(f"    A: {answer.text or '(empty answer)'}   ({1000 * answer.seconds:.0f} ms)")
        return answer

    def _draw(self) -> np.ndarray:
        if self.window is not None:
            self.status.typing = self.window.typing
        return draw_overlay(self.last_frame, self.status, self.options.heatmap, self.options.display_height)

    def render(self) -> bool:
        """Draw the last frame with the overlay and hand it to every sink; False to stop."""
        image = self._draw()
        return all([sink.show(image) for sink in self.sinks])

    def idle(self) -> bool:
        """No new frame: keep the window responsive, redrawn (in the window only) while a
        question is typed."""
        if self.window is None:
            return True
        if self.last_frame is not None and self.window.typing != self.status.typing:
            return self.window.show(self._draw())
        return self.window.poll()

    def log_status(self) -> None:
        every = self.options.status_every
        if every and self.status.frames % every == 0:
            self.log("  ".join(self.status.lines()[1:]) + f"  [t={self.status.timestamp:.1f}s]")

    def limit_reached(self, frame: SampledFrame | None) -> str | None:
        options = self.options
        if options.max_frames is not None and self.status.frames >= options.max_frames:
            return f"reached --max-frames {options.max_frames}"
        if frame is not None and options.duration is not None and frame.timestamp >= options.duration:
            return f"reached --duration {options.duration:g} s"
        return None

    def process(self, frame: SampledFrame) -> None:
        """The model's work for one frame: questions due before it, the frame, questions due at it."""
        if self.status.frames:  # questions asked before this frame: answered without it
            for question in self.schedule.due(frame.timestamp, inclusive=False):
                self.answer(question)
        self.ingest(frame)
        for question in self.schedule.due(frame.timestamp):
            self.answer(question)

    def work(self, step: Callable[[], None], worker: futures.ThreadPoolExecutor | None) -> bool:
        """Run a model step. With a window it runs on `worker` while this thread keeps polling the
        window's keys (OpenCV keeps one pending key: polling only between steps loses the keys typed
        during one). False if the user asked to quit meanwhile (the step still completes)."""
        if worker is None:
            step()
            return True
        future = worker.submit(step)
        keep_going = True
        try:
            while not future.done():
                keep_going = self.idle() and keep_going
                futures.wait([future], timeout=0.01)
        finally:
            futures.wait([future])  # Ctrl-C: the session is not left to a step still running
        future.result()  # the step's exception, if any
        return keep_going

    def run(self) -> DemoResult:
        self.capture.start()
        end, stopped_by_user = None, False
        worker = futures.ThreadPoolExecutor(1, thread_name_prefix="stc-demo-model") if self.window is not None else None
        try:
            while end is None:
                frame = self.queue.get(timeout=0.01 if self.window is not None else 0.05)
                if frame is None:
                    if self.queue.finished:
                        end = self.capture.end_message or "source ended"
                    elif not self.idle():
                        end, stopped_by_user = "stopped (q pressed or window closed)", True
                    continue
                if (end := self.limit_reached(frame)) is not None:
                    break
                keep_going = self.work(lambda: self.process(frame), worker)
                self.status.dropped = self.queue.dropped
                if not (self.render() and keep_going):
                    end, stopped_by_user = "stopped (q pressed or window closed)", True
                self.log_status()
                end = end or self.limit_reached(None)
        except KeyboardInterrupt:
            end, stopped_by_user = "stopped (Ctrl-C)", True
        finally:
            self.capture.stop()
            if worker is not None:
                worker.shutdown()
        self.log(f"stream ended: {end}")
        if not stopped_by_user:
            self.answer_late_questions()
        return DemoResult(self.status.frames, self.queue.dropped, end, self.answers, stopped_by_user)

    def answer_late_questions(self) -> None:
        """Questions whose time the stream never reached: answered from all of it, shown on one
        more frame."""
        late = self.schedule.remaining()
        if not late:
            return
        if self.last_frame is None:
            self.log(f"{len(late)} question(s) not answered: no frame was ingested")
            return
        for question in late:
            self.answer(question, late=True)
        self.render()


def run_demo(session, source, schedule: QuestionSchedule, options: DemoOptions, sinks: Iterable = (),
             window: WindowSink | None = None, log: Callable[[str], None] = print) -> DemoResult:
    """Stream `source` into a `StreamingSession` until the source ends, a limit is reached or the
    user stops; answer each scheduled question once the stream reaches its time (questions
    never reached are answered at the end), and hand every annotated frame to the sinks (and
    the window). The caller owns the session, the source and the sinks (closes them)."""
    sinks = list(sinks) + ([window] if window is not None else [])
    return _DemoLoop(session, source, schedule, options, sinks, window, log).run()
