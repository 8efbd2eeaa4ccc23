"""Reading and sampling videos with decord (OpenCV for truncated or damaged files), with clear errors for
missing or unreadable files. Both decoders are imported when a video is opened: the eval modules
that import this one load neither until then."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import numpy as np

from stc.errors import InputError

TRUNCATED_SHARE = 0.9  # fewer decodable frames than this share of the header's count: warned about


class VideoError(InputError):
    """A video that cannot be used: missing, unreadable, or empty."""


@dataclass
class SampledVideo:
    frames: np.ndarray  # [F, H, W, 3] uint8 RGB
    timestamps: np.ndarray  # [F] seconds
    source_fps: float
    duration: float


def sample_times(duration: float, fps: float, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """Sample instants k / fps (k = 0, 1, ...) within [start, end] (end defaults to duration)."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    end = duration if end is None else min(end, duration)
    first = np.ceil(start * fps - 1e-9)
    last = np.floor(end * fps + 1e-9)
    if last < first:
        return np.zeros(0)
    times = np.arange(first, last + 1) / fps
    return times[times < duration] if duration > 0 else times


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 to /dev/null inside the block: decord and OpenCV's FFmpeg log there
    from C (several lines per damaged file) besides raising or returning what went wrong."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def announced_frames(path: str) -> int | None:
    """The frame count the container's header announces (as OpenCV reads it), None if unknown."""
    import cv2

    capture = cv2.VideoCapture(path)
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT) if capture.isOpened() else 0
    capture.release()
    return int(count) if count > 0 else None


class _Frames:
    """What decord's get_batch returns, as far as it is used: `asnumpy()`."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def asnumpy(self) -> np.ndarray:
        return self.array


class SequentialReader:
    """decord.VideoReader's interface (len, get_avg_fps, get_batch) over OpenCV reading the frames
    in order, for truncated or damaged files: decord fails on frames of those at random (its
    decoding thread meets the broken packet meanwhile), OpenCV reads up to the damage and stops."""

    def __init__(self, path: str):
        import cv2

        self.path = path
        with _native_stderr_silenced():
            self._open()
            self.fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0)
            self.count = 0
            while self._capture.grab():
                self.count += 1
            self._open()

    def _open(self) -> None:
        import cv2

        self._capture = cv2.VideoCapture(self.path)
        self._next = 0  # index of the frame the next read returns

    def __len__(self) -> int:
        return self.count

    def get_avg_fps(self) -> float:
        return self.fps

    def get_batch(self, indices) -> _Frames:
        """RGB frames at these indices (read forward; reopened to go back)."""
        frames = []
        with _native_stderr_silenced():
            for index in indices:
                if index < self._next:
                    self._open()
                while self._next <= index:
                    ok, image = self._capture.read()
                    if not ok:
                        raise VideoError(f"cannot decode frame {index} of {self.path}")
                    self._next += 1
                frames.append(np.ascontiguousarray(image[..., ::-1]))
        return _Frames(np.stack(frames))


def open_video(path: str | os.PathLike):
    """A decord VideoReader, or VideoError naming the file and the reason. A truncated or damaged
    file, with far fewer frames than its header announces, is read by a SequentialReader and
    warned about on stderr; one with no decodable frame is refused."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"video not found: {path}")
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    with _native_stderr_silenced():
        announced = announced_frames(path)
        try:
            reader = decord.VideoReader(path, num_threads=1)
        except Exception:  # decord raises its own DECORDError and RuntimeErrors, with C++ locations
            reader = None
    decodable = 0 if reader is None else len(reader)
    if decodable and (announced is None or decodable >= TRUNCATED_SHARE * announced):
        return reader
    if announced is None:
        raise VideoError(f"cannot decode video {path}: not a video, or a damaged one")
    reader = SequentialReader(path)
    if not len(reader):
        raise VideoError(f"cannot decode video {path}: its header announces {announced} frames but none can be decoded "
                         "(truncated or damaged file?)")
    print(f"warning: {path}: only {len(reader)} of the {announced} frames its header announces can be decoded "
          f"(truncated or damaged file?); using those {len(reader)}", file=sys.stderr)
    return reader


def sample_video(
    path: str | os.PathLike,
    fps: float = 1.0,
    max_frames: int | None = None,
    start: float = 0.0,
    end: float | None = None,
) -> SampledVideo:
    """Frames at fps (k/fps seconds) between start and end, at most max_frames (the first ones)."""
    reader = open_video(path)
    source_fps = float(reader.get_avg_fps()) or 1.0
    duration = len(reader) / source_fps
    times = sample_times(duration, fps, start, end)
    if max_frames is not None:
        times = times[:max_frames]
    if len(times) == 0:
        raise VideoError(f"no frames of {path} fall in [{start}, {end if end is not None else duration}] s")
    index = np.minimum(np.round(times * source_fps).astype(int), len(reader) - 1)
    try:
        frames = reader.get_batch(list(index)).asnumpy()
    except Exception as exc:
        raise VideoError(f"cannot decode frames of {path}: {exc}") from exc
    return SampledVideo(frames=frames, timestamps=times, source_fps=source_fps, duration=duration)
