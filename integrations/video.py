"""Reading and sampling videos with decord, with clear errors for missing or unreadable files."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


class VideoError(RuntimeError):
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


def open_video(path: str | os.PathLike):
    """A decord VideoReader, or VideoError naming the file and the reason."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"video not found: {path}")
    try:
        import decord

        reader = decord.VideoReader(path, num_threads=1)
    except Exception as exc:  # decord raises its own DECORDError and RuntimeErrors
        raise VideoError(f"cannot decode video {path}: {exc}") from exc
    if len(reader) == 0:
        raise VideoError(f"video has no frames: {path}")
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
