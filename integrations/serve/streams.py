"""Live streams on one shared model: `StreamManager` adds, lists and removes them, ingests their
frames and answers their questions.

Each stream (`stc.integrations.serve.live_stream.LiveStream`, re-exported here) is a source, a capture thread (the demo's `FrameCapture`) filling a bounded
`FrameQueue` that drops its oldest frame when the model falls behind (counted), and a
`StreamingSession` of its own on the one `SharedModel`. One ingestion thread goes round the
streams and ingests what each has queued (up to the session's `vit_batch` frames, in whole
blocks) in that stream's turn on the model; with `batch_streams` (the default) the streams of a
round that share an STC config, chunk length and frame size are encoded in one vision-encoder
call (`stc.integrations.serve.batch`), and those whose new blocks have one token count are
prefilled in one batched LLM call. Questions take turns on the same lock, so a question waits at
most for one chunk (batched: one encoder call of its streams, then one prefill, of its streams or
of its own). A source that ends or disconnects marks its stream
`ended` (with the reason); a stream whose ingestion fails is `failed`; either still answers
from the memory it has.

Memory: each stream's KV is capped by its session's `memory_budget`; the server-wide budget
admits a stream only while the budgets of all streams fit in it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from stc.errors import STCError

from stc.integrations.engine.session import StreamingSession
from stc.integrations.serve.batch import StreamFrames, ingest_many
from stc.integrations.serve.errors import BadRequest, Conflict, NotFound
from stc.integrations.serve.live_stream import ENDED, FAILED, LIVE, Cancelled, LiveStream, stage_seconds
from stc.integrations.serve.requests import Question, ServerDefaults, StreamRequest, stream_request
from stc.integrations.serve.shared_model import SharedModel, StateSlot
from stc.integrations.serve.sources import SourceOpener

IDLE_WAIT_S = 0.02  # the ingestion thread's nap when no stream has a frame


def _failed(stream: LiveStream, exc: Exception) -> None:
    stream.finish(FAILED, f"ingestion failed: {type(exc).__name__}: {exc}")


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
        self.llm_prefill_calls = 0  # LLM prefill calls of those rounds (batched: one per group of equal shapes)
        self._round_lock = threading.Lock()  # held through each round (see between_rounds)
        self._callers_waiting = 0  # between_rounds callers waiting or holding: no round starts meanwhile
        self._waiting_lock = threading.Lock()
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
                "ingest_rounds": self.ingest_rounds, "encoder_calls": self.encoder_calls,
                "llm_prefill_calls": self.llm_prefill_calls}

    # -- ingestion ------------------------------------------------------------------------------

    @contextmanager
    def between_rounds(self) -> Iterator[None]:
        """Hold the ingestion thread between two rounds (to read its counters and the streams'
        figures as one consistent snapshot). Fair: the ingestion thread starts no new round while
        a caller waits, so the wait is at most the round in progress (a plain lock released and
        taken again by the ingestion thread lets a caller wait for many rounds)."""
        with self._waiting_lock:
            self._callers_waiting += 1
        try:
            with self._round_lock:
                yield
        finally:
            with self._waiting_lock:
                self._callers_waiting -= 1

    def _ingest_forever(self) -> None:
        while not self._stop.is_set():
            if self._callers_waiting:  # let a between_rounds caller in before the next round
                self._stop.wait(0.001)
                continue
            with self._round_lock:
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
                    self.encoder_calls += 1  # one chunk: one encoder call and one prefill
                    self.llm_prefill_calls += 1
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
        that can share one, one LLM prefill for the streams whose new blocks have one shape."""
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
        with stage_seconds(self.shared.state.timer, self.shared.model.device) as seconds:
            step = ingest_many(self.shared, items)
        self.encoder_calls += step.encoder_calls
        self.llm_prefill_calls += step.prefill_calls
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
