"""One live stream of `stc serve`: its source, the capture thread (the demo's `FrameCapture`)
filling a bounded `FrameQueue`, its own `StreamingSession` on the shared model, and what the
page and the API show of it (status, figures, the last picture). `StreamManager`
(`stc.integrations.serve.streams`) holds the streams and takes them in turns on the model."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from contextlib import contextmanager

import numpy as np

import stc

from stc.integrations.demo import DemoAnswer, FrameCapture, FrameQueue, StreamStatus, draw_overlay, kept_grid
from stc.integrations.engine.session import StreamingSession
from stc.integrations.serve.errors import NotFound
from stc.integrations.serve.requests import Question, StreamRequest
from stc.integrations.serve.shared_model import SharedModel, StateSlot

LIVE, ENDED, FAILED = "live", "ended", "failed"


class Cancelled(Exception):
    """A question whose client left: before its turn came (it is never run) or while it was
    answered (its decoding stops at the next piece of text)."""


class LiveStream:
    """One stream: source, capture, session, and what the page and the API show of it."""

    def __init__(self, stream_id: str, request: StreamRequest, source, session: StreamingSession, slot: StateSlot):
        self.id, self.request, self.source, self.session, self.slot = stream_id, request, source, session, slot
        self.sample_fps = min(request.session.sample_fps, source.fps)
        self.queue = FrameQueue(request.queue_size)
        self.capture = FrameCapture(source, self.sample_fps, self.queue, request.realtime)
        self.state, self.end_message = LIVE, None
        self.created = time.time()
        self.closed = False
        self.status = StreamStatus(source=source.name, sample_fps=self.sample_fps,
                                   memory_budget=request.session.memory_budget)
        self.figures: dict = {}
        self.questions_answered = 0
        self._pending: list = []  # frames taken from the queue, waiting to fill a whole block
        self._recent: deque[tuple[float, int]] = deque(maxlen=10)  # (time, frames ingested so far)
        self._frame: np.ndarray | None = None
        self._picture: tuple[tuple, bytes] | None = None  # (what it shows, JPEG)
        self._view = threading.Lock()  # figures, status and the last frame, read by the page

    # -- ingestion (the manager's thread) --------------------------------------------------

    def take_frames(self) -> list:
        """Frames to ingest now: what is queued, up to `vit_batch`, in whole blocks unless the
        source has finished."""
        block = self.session.frames_per_block
        while len(self._pending) < self.session.vit_batch and (frame := self.queue.get(timeout=0)) is not None:
            self._pending.append(frame)
        count = len(self._pending) if self.queue.finished else len(self._pending) - len(self._pending) % block
        taken, self._pending = self._pending[:count], self._pending[count:]
        return taken

    def ingest(self, shared: SharedModel) -> bool:
        """Ingest what `take_frames` gives, in this stream's turn (frames wait in the bounded
        queue meanwhile, not here); False if there was nothing."""
        with shared.turn(self.slot):
            frames = [] if self.closed else self.take_frames()
            if not frames:
                return False
            with stage_seconds(self.session.timer, shared.model.device) as seconds:
                report = self.session.append_frames(np.stack([f.image for f in frames]),
                                                    timestamps=[f.timestamp for f in frames])
            figures = self._figures(shared.model)
        self._show(figures, frames, report, seconds)
        return True

    def take(self, shared: SharedModel) -> list:
        """`take_frames` in this stream's turn (none once it is closed), for a batched round."""
        with shared.turn(self.slot):
            return [] if self.closed else self.take_frames()

    def ingested(self, shared: SharedModel, frames: list, report, seconds: dict) -> None:
        """What the page and the API show after a batched round ingested `frames` (`seconds`:
        this stream's share of the round's stage seconds)."""
        with shared.turn(self.slot):
            figures = self._figures(shared.model)
        self._show(figures, frames, report, seconds)

    def _show(self, figures: dict, frames: list, report, seconds: dict) -> None:
        now = time.perf_counter()
        self._recent.append((now, figures["frames"]))
        first_time, first_frames = self._recent[0]
        figures["ingest_fps"] = (figures["frames"] - first_frames) / (now - first_time) if now > first_time else 0.0
        with self._view:
            self.figures, self._frame = figures, frames[-1].image
            self._update_status(figures, frames[-1], report, seconds)

    def _figures(self, model) -> dict:
        stats, memory = stc.stats(model), self.session.memory()
        return {
            "frames": self.session.frames_seen,
            "stream_time": self.session.last_timestamp,
            "dropped_frames": self.queue.dropped,
            "vit_tokens": stats["vit_tokens"],
            "vit_tokens_reused": stats["vit_tokens"] - stats["vit_tokens_recomputed"],
            "vit_reuse_ratio": stats["vit_reuse_ratio"],
            "llm_tokens_in": stats["llm_tokens_in"],
            "llm_tokens_kept": stats["llm_tokens_kept"],
            "llm_keep_ratio": stats["llm_keep_ratio"],
            "memory_bytes": memory["total_bytes"],
            "memory_budget": memory["memory_budget"],
            "evicted_blocks": memory["evicted_blocks"],
            "blocks": memory["blocks"],
            "vit_reference_bytes": memory["vit_reference_bytes"],
        }

    def _update_status(self, figures: dict, frame, report, seconds: dict) -> None:
        status = self.status
        status.source, status.timestamp = self.source.name, frame.timestamp
        status.frames, status.ingest_fps = figures["frames"], figures["ingest_fps"]
        per_frame_ms = 1000 / max(report.frames, 1)
        status.vit_ms_per_frame = per_frame_ms * seconds.get("vit", 0.0)
        status.encode_ms_per_frame = per_frame_ms * report.encode_s
        status.resize_ms_per_frame = per_frame_ms * seconds.get("preprocess", 0.0)
        status.vit_reuse = figures["vit_reuse_ratio"]
        status.tokens_in_per_frame = report.tokens_in / max(report.frames, 1)
        status.tokens_kept_per_frame = report.tokens_kept / max(report.frames, 1)
        status.memory_bytes, status.evicted = figures["memory_bytes"], figures["evicted_blocks"]
        status.dropped = figures["dropped_frames"]
        status.kept_grid = None
        if report.kept and report.tokens_kept < report.tokens_in:
            per_block = report.tokens_in // max(math.ceil(report.frames / self.session.frames_per_block), 1)
            image = frame.image
            status.kept_grid = kept_grid(report.kept[-1].cpu().numpy(), per_block, image.shape[1] / image.shape[0])

    def finish(self, state: str, message: str) -> None:
        self.state, self.end_message = state, message
        self.capture.stop()

    # -- questions (request threads) --------------------------------------------------------

    def ask(self, shared: SharedModel, question: Question, cancelled: threading.Event | None = None,
            on_text=None) -> dict:
        """Answer `question` in this stream's turn. `on_text` gets the answer's text in pieces
        while it is decoded; once `cancelled` is set (the client left) the question is not run,
        or its decoding stops at the next piece (`Cancelled` either way)."""
        asked = time.perf_counter()

        def piece(text: str) -> None:
            if cancelled is not None and cancelled.is_set():
                raise Cancelled()
            if on_text is not None:
                on_text(text)

        with shared.turn(self.slot):
            if cancelled is not None and cancelled.is_set():
                raise Cancelled()
            if self.closed:
                raise NotFound(f"stream {self.id!r} was removed")
            started = time.perf_counter()
            answer = self.session.ask(question.text, max_new_tokens=question.max_new_tokens, since=question.since,
                                      on_text=piece)
            stream_time = self.session.last_timestamp
        done = time.perf_counter()
        limit = question.max_new_tokens or self.session.max_new_tokens
        ended = len(answer.token_ids) < limit or answer.token_ids[-1] in self.session.eos_ids
        with self._view:
            self.questions_answered += 1
            self.status.answer = DemoAnswer(question.text, stream_time or 0.0, answer.frames_seen, answer.text, done - started)
        return {
            "stream": self.id,
            "question": question.text,
            "answer": answer.text,
            "stream_time": stream_time,
            "frames_seen": answer.frames_seen,
            "latency_s": done - asked,
            "answer_s": done - started,
            "tokens": len(answer.token_ids),
            "finish_reason": "stop" if ended else "length",
        }

    # -- what clients see -------------------------------------------------------------------

    def describe(self) -> dict:
        with self._view:
            figures = dict(self.figures) or {"frames": 0, "dropped_frames": self.queue.dropped,
                                             "memory_budget": self.request.session.memory_budget}
            answered = self.questions_answered
        config = self.request.config
        return {
            "id": self.id,
            "source": self.source.name,
            "live_source": bool(self.source.live),
            "state": self.state,
            "end_message": self.end_message,
            "sample_fps": self.sample_fps,
            "queue_size": self.request.queue_size,
            "method": "dense" if config is None else getattr(config, "name", None) or "stc",
            "config": None if config is None else _plain(config),
            "options": self.request.session.as_dict(),
            "questions_answered": answered,
            "figures": figures,
        }

    def picture(self, heatmap: bool, height: int) -> bytes | None:
        """The last ingested frame with the demo's overlay, as JPEG (None before the first)."""
        import cv2  # on use: OpenCV only to encode the picture; importing the server stays free of it

        with self._view:
            if self._frame is None:
                return None
            key = (self.status.frames, heatmap, height, id(self.status.answer))
            if self._picture is not None and self._picture[0] == key:
                return self._picture[1]
            image = draw_overlay(self._frame, self.status, heatmap=heatmap, display_height=height)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        data = jpeg.tobytes()
        with self._view:
            self._picture = (key, data)
        return data


@contextmanager
def stage_seconds(timer, device):
    """The model's stage timer on for the block (as the demo times a frame); yields the dict
    that holds the block's seconds per stage once it is done."""
    enabled, timed_device = timer.enabled, timer.device
    timer.enabled, timer.device = True, device
    timer.reset()
    seconds: dict[str, float] = {}
    try:
        yield seconds
        seconds.update(timer.snapshot())
    finally:
        timer.enabled, timer.device = enabled, timed_device


def _plain(config) -> dict:
    return {k: v for k, v in vars(config).items() if not k.startswith("_")}
