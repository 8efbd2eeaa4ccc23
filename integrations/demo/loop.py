"""The demo loop (`run_demo`): ingests sampled frames into a `StreamingSession`, answers due
questions (capture goes on meanwhile, and with a window the model works on a thread of its own
while the window's keys are read) and shows or writes every annotated frame.

Timing: live sources (cameras, stream URLs), and files played in real time, never wait for the
model: when the queue is full its oldest frame is dropped and counted, so memory stays bounded
and the picture stays current. Headless playback of a file or of the synthetic stream instead
waits for the model, so the same command writes the same video on any machine.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field

import numpy as np

from stc.integrations.demo.overlay import DemoAnswer, StreamStatus, draw_overlay, kept_grid
from stc.integrations.demo.questions import QuestionSchedule, TimedQuestion
from stc.integrations.demo.sinks import WindowSink
from stc.integrations.demo.sources import FrameCapture, FrameQueue, SampledFrame


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
    """Mean of the last `size` values but the first, which is the mean until a second comes: the
    stream's first frame pays the model's one-off warm-up (allocations, kernel choices)."""

    def __init__(self, size: int = 10):
        self.values: deque[float] = deque(maxlen=size)
        self.first: float | None = None

    def add(self, value: float) -> float:
        if self.first is None:
            self.first = value
            return value
        self.values.append(value)
        return sum(self.values) / len(self.values)


@contextlib.contextmanager
def _stage_timer(session):
    """The session's stage timer on inside the block (as `stc bench` uses it), so that each frame's
    time splits into preprocessing, the ViT, the projector and the selection."""
    timer = session.timer
    enabled, device = timer.enabled, timer.device
    timer.device, timer.enabled = session.model.device, True
    try:
        yield timer
    finally:
        timer.enabled, timer.device = enabled, device


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
        self._encode_ms, self._resize_ms, self._vit_ms = _RecentMean(), _RecentMean(), _RecentMean()

    def ingest(self, frame: SampledFrame) -> None:
        timer = self.session.timer
        timer.reset()
        report = self.session.append_frames(frame.image[None], timestamps=[frame.timestamp])
        seconds = timer.snapshot()
        self._ingest_times.append(time.perf_counter())
        status = self.status
        status.source, status.timestamp, status.frames = self.source.name, frame.timestamp, status.frames + report.frames
        if len(self._ingest_times) > 1:
            status.ingest_fps = (len(self._ingest_times) - 1) / max(self._ingest_times[-1] - self._ingest_times[0], 1e-9)
        per_frame_ms = 1000 / max(report.frames, 1)
        status.encode_ms_per_frame = self._encode_ms.add(per_frame_ms * report.encode_s)
        status.resize_ms_per_frame = self._resize_ms.add(per_frame_ms * seconds.get("preprocess", 0.0))
        status.vit_ms_per_frame = self._vit_ms.add(per_frame_ms * seconds.get("vit", 0.0))
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
        with _stage_timer(self.session):
            return self._run()

    def _run(self) -> DemoResult:
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
