"""Live demo core: watch a source, ask questions at any time, show what STC saves.

One module per job, each usable on its own (the `stc demo` command, `stc.cli.demo`, wires them):
- `sources`: camera / file / URL sources (`CaptureSource`, `open_source`), the capture thread
  (`FrameCapture`) and the bounded `FrameQueue` between it and the model;
- `questions`: `TimedQuestion` (`t=5:question`), question files, the `QuestionSchedule`;
- `overlay`: `StreamStatus` and `draw_overlay` (the numbers, the kept-token heat map, the answer);
- `sinks`: `VideoFileSink` (mp4) and `WindowSink` (an OpenCV window that also takes questions);
- `loop`: `run_demo`, which streams frames into a `StreamingSession` and answers due questions.

The demo imports nothing from eval or the CLI: the synthetic stream is passed to `open_source`.
Every public name is re-exported here (`from stc.integrations.demo import run_demo`).
"""

from stc.integrations.demo.errors import DemoError, SourceError
from stc.integrations.demo.loop import DemoOptions, DemoResult, run_demo
from stc.integrations.demo.overlay import DemoAnswer, StreamStatus, display_size, draw_overlay, kept_grid, token_grid, wrap_text
from stc.integrations.demo.questions import QuestionSchedule, TimedQuestion, parse_timed_question, read_question_file
from stc.integrations.demo.sinks import VideoFileSink, WindowSink
from stc.integrations.demo.sources import (
    CAMERA_RETRY_S,
    FALLBACK_FPS,
    STREAM_SCHEMES,
    SYNTHETIC,
    CaptureSource,
    FrameCapture,
    FrameQueue,
    SampledFrame,
    open_source,
    parse_source,
)

__all__ = [
    "CAMERA_RETRY_S", "FALLBACK_FPS", "STREAM_SCHEMES", "SYNTHETIC", "CaptureSource", "DemoAnswer", "DemoError",
    "DemoOptions", "DemoResult", "FrameCapture", "FrameQueue", "QuestionSchedule", "SampledFrame", "SourceError",
    "StreamStatus", "TimedQuestion", "VideoFileSink", "WindowSink", "display_size", "draw_overlay", "kept_grid",
    "open_source", "parse_source", "parse_timed_question", "read_question_file", "run_demo", "token_grid", "wrap_text",
]
