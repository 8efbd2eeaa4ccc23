"""Live streams on one shared model: `StreamManager` adds, lists and removes them, ingests their
frames and answers their questions.

Each stream is a source, a capture thread (the demo's `FrameCapture`) filling a bounded
`FrameQueue` that drops its oldest frame when the model falls behind (counted), and a
`StreamingSession` of its own on the one `SharedModel`. One ingestion thread goes round the
streams and ingests what each has queued (up to the session's `vit_batch` frames, in whole
blocks) in that stream's turn on the model; with `batch_streams` (the default) the streams of a
round that share an STC config, chunk length and frame size are encoded in one vision-encoder
call (`stc.integrations.serve.batch`), each prefilling its own blocks in its own turn.
Questions take turns on the same lock, so a question waits at most for one chunk (batched: one
call of all its streams, then one prefill). A source that ends or disconnects marks its stream
`ended` (with the reason); a stream whose ingestion fails is `failed`; either still answers
from the memory it has.

Memory: each stream's KV is capped by its session's `memory_budget`; the server-wide budget
admits a stream only while the budgets of all streams fit in it.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from contextlib import contextmanager

import numpy as np

import stc
from stc.errors import STCError

from stc.integrations.demo import DemoAnswer, FrameCapture, FrameQueue, StreamStatus, draw_overlay, kept_grid
from stc.integrations.engine.session import StreamingSession
from stc.integrations.serve.batch import StreamFrames, ingest_many
from stc.integrations.serve.errors import BadRequest, Conflict, NotFound
from stc.integrations.serve.requests import Question, ServerDefaults, StreamRequest, stream_request
from stc.integrations.serve.shared_model import SharedModel, StateSlot
from stc.integrations.serve.sources import SourceOpener

LIVE, ENDED, FAILED = "live", "ended", "failed"
IDLE_WAIT_S = 0.02  # the ingestion thread's nap when no stream has a frame


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
            with _stage_seconds(self.session.timer, shared.model.device) as seconds:
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
        import cv2

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
def _stage_seconds(timer, device):
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


def _failed(stream: LiveStream, exc: Exception) -> None:
    stream.finish(FAILED, f"ingestion failed: {type(exc).__name__}: {exc}")


def _plain(config) -> dict:
    return {k: v for k, v in vars(config).items() if not k.startswith("_")}


class StreamManager:
    """The streams of one server. `add(body)` takes a client's JSON request (checked), `get`,
    `list`, `remove`; `ask(id, question)`; `close()` stops everything."""

    def __init__(self, shared: SharedModel, sources: SourceOpener, defaults: ServerDefaults = ServerDefaults(),
                 max_streams: int = 8, memory_budget: int | None = None, batch_streams: bool = True):
        self.shared, self.sources, self.defaults = shared, sources, defaults
        self.max_streams, self.memory_budget = max_streams, memory_budget
        self.batch_streams = batch_streams  # one vision-encoder call per round for the streams that can share it
        if memory_budget is not None and defaults.session.memory_budget is None:
            raise ValueError("a server-wide memory budget needs a default per-stream budget")
        self._streams: dict[str, LiveStream] = {}
        self._opening: dict[str, StreamRequest] = {}  # admitted, their source opening
        self._lock = threading.Lock()  # the table of streams
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self.cancelled_questions = 0
        self.ingest_rounds = 0  # rounds of the ingestion thread over the streams that ingested something
        self.encoder_calls = 0  # vision-encoder calls of those rounds (batched: one per group of streams)
        self.round_lock = threading.Lock()  # held through each round: hold it to read the counters between rounds
        self._thread = threading.Thread(target=self._ingest_forever, name="stc-serve-ingest", daemon=True)
        self._thread.start()

    # -- the table ----------------------------------------------------------------------------

    def add(self, body) -> LiveStream:
        request = stream_request(body, self.defaults)
        resolved = self.sources.resolve(request.source)
        with self._lock:
            self._admit(request)
            stream_id = request.name or self._free_id()
            self._opening[stream_id] = request
        try:
            stream = self._start(stream_id, request, resolved)
        finally:
            with self._lock:
                del self._opening[stream_id]
        with self._lock:
            self._streams[stream_id] = stream
        stream.capture.start()
        return stream

    def _admit(self, request: StreamRequest) -> None:
        requests = [s.request for s in self._streams.values()] + list(self._opening.values())
        if request.name is not None and (request.name in self._streams or request.name in self._opening):
            raise Conflict(f"a stream named {request.name!r} exists")
        if len(requests) >= self.max_streams:
            raise Conflict(f"this server takes at most {self.max_streams} streams; remove one first")
        if self.memory_budget is not None:
            held = sum(r.session.memory_budget for r in requests)
            asked = request.session.memory_budget
            if asked is None:
                raise BadRequest(f"this server has a memory budget ({self.memory_budget} bytes): give memory_budget")
            if held + asked > self.memory_budget:
                raise Conflict(f"the server's memory budget is {self.memory_budget} bytes and its streams hold "
                               f"{held}; this stream's memory_budget {asked} does not fit")

    def _free_id(self) -> str:
        taken = set(self._streams) | set(self._opening)
        return next(f"stream-{n}" for n in self._ids if f"stream-{n}" not in taken)

    def _start(self, stream_id: str, request: StreamRequest, resolved) -> LiveStream:
        source = self.sources.open(resolved)
        slot = StateSlot()
        try:
            with self.shared.turn(slot):
                session = StreamingSession(self.shared.model, self.shared.processor, config=request.config,
                                           **request.session.as_dict())
        except (ValueError, STCError) as exc:
            source.close()
            raise BadRequest(str(exc)) from exc
        except BaseException:
            source.close()
            raise
        return LiveStream(stream_id, request, source, session, slot)

    def get(self, stream_id: str) -> LiveStream:
        with self._lock:
            stream = self._streams.get(stream_id)
        if stream is None:
            raise NotFound(f"no stream {stream_id!r}")
        return stream

    def list(self) -> list[LiveStream]:
        with self._lock:
            return list(self._streams.values())

    def remove(self, stream_id: str) -> None:
        stream = self.get(stream_id)
        with self._lock:
            self._streams.pop(stream_id, None)
        self._close(stream)

    def _close(self, stream: LiveStream) -> None:
        stream.capture.stop()
        with self.shared.turn(stream.slot):
            stream.closed = True
            stream.session.close()
        stream.source.close()

    def ask(self, stream_id: str, question: Question, cancelled: threading.Event | None = None, on_text=None) -> dict:
        try:
            return self.get(stream_id).ask(self.shared, question, cancelled, on_text)
        except Cancelled:
            self.cancelled_questions += 1
            raise
        except (ValueError, STCError) as exc:
            if isinstance(exc, NotFound):
                raise
            raise BadRequest(str(exc)) from exc

    def memory(self) -> dict:
        streams = self.list()
        return {"memory_budget": self.memory_budget,
                "stream_budgets": sum(s.request.session.memory_budget or 0 for s in streams),
                "memory_bytes": sum(s.describe()["figures"].get("memory_bytes", 0) for s in streams),
                "streams": len(streams), "max_streams": self.max_streams, "batch_streams": self.batch_streams,
                "ingest_rounds": self.ingest_rounds, "encoder_calls": self.encoder_calls}

    # -- ingestion ------------------------------------------------------------------------------

    def _ingest_forever(self) -> None:
        while not self._stop.is_set():
            with self.round_lock:
                streams = [s for s in self.list() if s.state == LIVE and not s.closed]
                worked = self._batched_round(streams) if self.batch_streams else self._round(streams)
                if worked:
                    self.ingest_rounds += 1
            if not worked:
                self._stop.wait(IDLE_WAIT_S)

    def _round(self, streams: list[LiveStream]) -> bool:
        """One stream after another, each in its own turn: one encoder call per stream with frames."""
        worked = False
        for stream in streams:
            finished = stream.queue.finished  # before taking: a frame queued after this is still taken
            try:
                if stream.ingest(self.shared):
                    self.encoder_calls += 1
                    worked = True
                    continue
            except Exception as exc:  # noqa: BLE001 - the stream stops; the server and the other streams go on
                _failed(stream, exc)
                worked = True
                continue
            if finished:
                stream.finish(ENDED, stream.capture.end_message or "source ended")
        return worked

    def _batched_round(self, streams: list[LiveStream]) -> bool:
        """Every stream's queued frames in one `ingest_many`: one encoder call for the streams
        that can share one, each stream's prefill in its own turn."""
        taken, items, failed = [], [], False
        for stream in streams:
            finished = stream.queue.finished  # before taking: a frame queued after this is still taken
            frames = stream.take(self.shared)
            if not frames:
                if finished:
                    stream.finish(ENDED, stream.capture.end_message or "source ended")
                continue
            try:  # frames of one stream that change size mid-chunk do not stack: that stream fails
                items.append(StreamFrames(stream.slot, stream.session, np.stack([f.image for f in frames]),
                                          [f.timestamp for f in frames]))
                taken.append((stream, frames))
            except Exception as exc:  # noqa: BLE001 - the stream stops; the server and the other streams go on
                _failed(stream, exc)
                failed = True
        if not items:
            return failed
        with _stage_seconds(self.shared.state.timer, self.shared.model.device) as seconds:
            step = ingest_many(self.shared, items)
        self.encoder_calls += step.encoder_calls
        total = sum(len(frames) for _, frames in taken)
        for (stream, frames), result in zip(taken, step.results):
            try:
                if result.error is not None:
                    raise result.error
                share = {stage: s * len(frames) / total for stage, s in seconds.items()}
                stream.ingested(self.shared, frames, result.report, share)
            except Exception as exc:  # noqa: BLE001 - the stream stops; the server and the other streams go on
                _failed(stream, exc)
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for stream in self.list():
            with self._lock:
                self._streams.pop(stream.id, None)
            self._close(stream)
        self.shared.close()
