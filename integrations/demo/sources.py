"""Where the demo's frames come from, and how they reach the loop.

- `CaptureSource`: a camera index, a video file or a stream URL over cv2.VideoCapture; a synthetic
  stream is passed in by the caller (`open_source(spec, synthetic=...)`; the `stc demo` command
  passes the testbed's endless stream, `stc.eval.synthetic.source.SyntheticSource`);
- `FrameQueue`: at most a frame or two; a live producer drops the oldest frame rather than wait;
- `FrameCapture`: a thread that reads the source, samples frames at the requested fps by their
  timestamps and puts them into the queue.

cv2 is imported inside functions: importing the demo package (the synthetic eval does, for
`token_grid`) does not load OpenCV.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stc.integrations.demo.errors import SourceError

SYNTHETIC = "synthetic"
CAMERA_RETRY_S = 2.0  # a live source that gives no frame for this long is taken as disconnected
FALLBACK_FPS = 25.0  # when a file or camera does not say its frame rate
STREAM_SCHEMES = ("rtsp", "rtmp", "udp", "tcp", "http", "https")


@dataclass
class SampledFrame:
    image: np.ndarray  # [H, W, 3] uint8 RGB
    timestamp: float  # stream seconds



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
    """OpenCV's and FFmpeg's messages off inside the block: OpenCV's own logging (opening a missing
    camera logs several lines), and file descriptor 2, to which FFmpeg writes past Python's
    sys.stderr (probing a file that is no video prints "moov atom not found"). The caller reports
    what went wrong in one line of its own."""
    import cv2

    logging = getattr(cv2.utils, "logging", None)  # OpenCV 5; OpenCV 4 has the calls on cv2 itself
    get_level, set_level = (logging.getLogLevel, logging.setLogLevel) if logging else (cv2.getLogLevel, cv2.setLogLevel)
    level = get_level()
    set_level(0)  # LOG_LEVEL_SILENT in both
    try:
        with _descriptor_to_devnull(2):
            yield
    finally:
        set_level(level)


@contextlib.contextmanager
def _descriptor_to_devnull(fd: int):
    """File descriptor `fd` writes to os.devnull inside the block (nothing happens if it is closed)."""
    sys.stderr.flush()
    try:
        saved = os.dup(fd)
    except OSError:  # no such descriptor: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


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
    with _quiet_opencv():  # probing and the first read: SourceError is the one message
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
