"""`stc demo`: watch a camera, a video or the synthetic stream, ask questions, see what STC saves.

The pieces (sources, capture thread, question schedule, overlay, sinks, loop) are in `demo`.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from stc.cli.options import user_errors

DESCRIPTION = """Stream a camera, a video file / URL or the built-in synthetic stream through a VideoLLM
with STC, and show (in a window, or in an mp4 with --headless) the live picture with ingestion fps,
ViT ms/frame, the share of ViT tokens the Cacher reused, the LLM tokens the Pruner kept per frame,
the stream's memory, dropped frames, an optional heat map of the kept tokens, and the answers to
questions asked while the stream runs."""

EPILOG = """examples:
  stc demo                                   synthetic stream, shipped model, window (or mp4 if no display)
  stc demo --source 0 --fps 2 --heatmap      webcam; type questions in the terminal or press / in the window
  stc demo --headless --out demo.mp4 --source video.mp4 --ask "t=10:What is in the video?"

window keys: q or Esc quits, / starts typing a question (Enter asks, Esc cancels); Ctrl-C stops too.
Headless playback of files and the synthetic stream waits for the model (the same run gives the same
video); cameras, stream URLs and window playback run in real time and drop the frames the model has
no time for."""

DEFAULT_OUT = "stc-demo.mp4"
FALLBACK_PRESET = "llava-ov-tiny"
HEADLESS_SYNTHETIC_SECONDS = 64.0  # the synthetic stream is endless: two episodes unless told otherwise
WINDOW_TITLE = "stc demo"


def register(subparsers, add_stc_options) -> None:
    from stc.cli.options import add_stream_options, positive

    parser = subparsers.add_parser(
        "demo", help="live demo: watch a camera, a video or a synthetic stream, ask questions, see what STC saves",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--source", default=None,
                        help="camera index (e.g. 0), video file, stream URL, or 'synthetic' (default: the built-in "
                             "synthetic stream, which needs no camera)")
    parser.add_argument("--model", default=None, help="checkpoint folder or preset name (default: the shipped testbed "
                        f"model in eval/testbed/assets/testbed-llava-ov, else the random preset {FALLBACK_PRESET})")
    parser.add_argument("--fps", type=positive(float), default=1.0,
                        help="frames sampled per second of stream (default 1; raise it for a smoother picture)")
    parser.add_argument("--headless", action="store_true", help="no window: write the annotated video to --out")
    parser.add_argument("--out", default=None,
                        help=f"annotated mp4 to write (default with --headless: {DEFAULT_OUT}); also records in window mode")
    parser.add_argument("--ask", action="append", default=[], metavar="t=SECONDS:QUESTION",
                        help='question asked once the stream reaches that time, e.g. "t=5:What colour is the car?" (repeatable)')
    parser.add_argument("--ask-file", default=None, metavar="FILE", help="questions, one t=SECONDS:QUESTION per line")
    parser.add_argument("--heatmap", action="store_true", help="draw the tokens the Pruner kept over the frame")
    parser.add_argument("--max-frames", type=positive(int), default=None, help="stop after this many ingested frames")
    parser.add_argument("--duration", type=positive(float), default=None,
                        help=f"stop at this stream time in seconds (headless synthetic default: {HEADLESS_SYNTHETIC_SECONDS:g})")
    parser.add_argument("--max-new-tokens", type=positive(int), default=16, help="longest answer in tokens (default 16)")
    parser.add_argument("--display-height", type=positive(int), default=480, help="height of the shown picture in px")
    add_stc_options(parser)
    add_stream_options(parser)
    parser.set_defaults(func=main)


def display_available() -> bool:
    """Whether a window can open: on Linux, an X11 or Wayland display must be set."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def default_model() -> tuple[str, str | None]:
    """(model, note): the shipped testbed model if it is there, else the tiny random preset."""
    from stc.eval.testbed import TESTBED_DIR

    if (TESTBED_DIR / "config.json").exists():
        return str(TESTBED_DIR), None
    return FALLBACK_PRESET, (f"note: the shipped testbed model is not in {TESTBED_DIR} yet; using the random-weight "
                             f"preset {FALLBACK_PRESET} instead (its answers are meaningless)")


def testbed_note(source_name: str, episodes: int = 20) -> str:
    """What the shipped testbed model knows (the synthetic world) and one question of each kind the
    synthetic benchmark's question writers ask, taken from generated episodes."""
    from stc.eval.synthetic.episodes import episode_seed, generate_episode
    from stc.eval.synthetic.scene import COLOURS, SHAPES

    examples = {}
    for index in range(episodes):
        for query in generate_episode(episode_seed("eval", index), render=False).queries:
            examples.setdefault(query.task, query.prompt)
    lines = [f"note: the shipped testbed model only knows the synthetic benchmark's world (the shapes {', '.join(SHAPES)}, "
             f"capital letters and digits, in {', '.join(COLOURS)}), so its answers about {source_name} mean little "
             "(give --model for a real VideoLLM). It answers questions of these forms:"]
    return "\n".join(lines + [f"  {examples[task]}" for task in sorted(examples)])


def _describe_source(source, spec: str | None) -> str:
    from stc.eval.synthetic.source import SyntheticSource
    from stc.integrations.demo import SYNTHETIC

    if isinstance(source, SyntheticSource):
        why = "--source synthetic" if spec else ("the default: needs no camera, and the shipped model was trained on "
                                                 "these scenes; use --source 0 for a webcam or a video file / URL")
        return f"source: the built-in {SYNTHETIC} stream, episodes of {source.config.frames} frames at {source.fps:g} fps ({why})"
    kind = "live, real time: frames the model has no time for are dropped" if source.live else f"video file at {source.fps:g} fps"
    return f"source: {source.name} ({kind})"


def _describe_stc(config) -> str:
    if config is None:
        return "off (dense)"
    parts = []
    if config.reuses_vit:
        parts.append(f"Cacher reuses ViT tokens (1 reference frame in {config.cache_interval}, "
                     f"{config.update_ratio:.0%} of the tokens recomputed on the others)")
    if config.prunes:
        parts.append(f"Pruner keeps {config.keep_ratio:.0%} of the visual tokens per frame")
    return "; ".join(parts) or "on, but neither part drops any work"


def _read_terminal_questions(schedule) -> None:
    """Lines typed in the terminal become questions asked now (runs on a daemon thread)."""
    for line in sys.stdin:
        schedule.ask_now(line)


def main(args: argparse.Namespace) -> int:
    from stc.eval.synthetic.source import SyntheticSource
    from stc.integrations.demo import (SYNTHETIC, DemoOptions, QuestionSchedule, open_source, parse_timed_question,
                                       read_question_file)

    # a DemoError (an InputError) reaches stc.cli.main, which prints it as one line and exits 2
    questions = [parse_timed_question(spec) for spec in args.ask]
    if args.ask_file:
        questions += read_question_file(args.ask_file)
    source = open_source(args.source or SYNTHETIC, synthetic=SyntheticSource)
    print(_describe_source(source, args.source))
    headless = args.headless
    out = args.out or (DEFAULT_OUT if headless else None)
    if not headless and not display_available():
        headless, out = True, out or DEFAULT_OUT
        print(f"no display (DISPLAY is not set): running headless and writing {out}")
    duration = args.duration
    if headless and duration is None and args.max_frames is None:
        if isinstance(source, SyntheticSource):
            duration = HEADLESS_SYNTHETIC_SECONDS
            print(f"the synthetic stream is endless: stopping at {duration:g} s (set --duration or --max-frames)")
        elif source.live:
            print("live source without --duration or --max-frames: stop with Ctrl-C")
    sample_fps = min(args.fps, source.fps)
    options = DemoOptions(sample_fps=sample_fps, realtime=not headless, max_frames=args.max_frames, duration=duration,
                          heatmap=args.heatmap, max_new_tokens=args.max_new_tokens, display_height=args.display_height)
    try:
        return _run(args, source, QuestionSchedule(questions), options, headless, out)
    finally:
        source.close()


def _run(args, source, schedule, options, headless: bool, out: str | None) -> int:
    from stc.integrations.loading import resolve_dtype
    from stc.eval.testbed import TESTBED_DIR

    from stc.eval.synthetic.source import SyntheticSource
    from stc.integrations.demo import VideoFileSink, WindowSink, run_demo
    from stc.integrations.engine.session import StreamingSession
    from stc.eval.presets import check_memory_budget, load_model

    model_name, note = (args.model, None) if args.model else default_model()
    if note:
        print(note)
    if Path(model_name).resolve() == TESTBED_DIR.resolve() and not isinstance(source, SyntheticSource):
        print(testbed_note(source.name))
    with user_errors():  # one line, exit 2; --out and the budget are checked before the model loads
        writer = VideoFileSink(out, options.sample_fps) if out else None
        check_memory_budget(model_name, args.memory_budget, resolve_dtype(args.dtype, args.device))
        model, processor, description = load_model(model_name, args.device, resolve_dtype(args.dtype, args.device))
    config = args.stc_config
    print(f"model: {description} on {args.device}")
    print(f"STC: {_describe_stc(config)}")
    window = None
    if not headless:
        window = WindowSink(WINDOW_TITLE, schedule.ask_now)
        threading.Thread(target=_read_terminal_questions, args=(schedule,), name="stc-demo-stdin", daemon=True).start()
        print("type a question and press Enter (here, or after / in the window); q in the window quits")
    try:
        with StreamingSession(model, processor, config=config, **args.stream,
                              sample_fps=options.sample_fps, max_new_tokens=args.max_new_tokens) as session:
            result = run_demo(session, source, schedule, options, sinks=[writer] if writer else [], window=window)
    finally:
        if writer is not None:
            writer.close()
        if window is not None:
            window.close()
    print(f"{result.frames} frames ingested, {result.dropped} dropped, {len(result.answers)} question(s) answered")
    if writer is not None and writer.frames_written:
        print(f"wrote {writer.path} ({writer.frames_written} frames at {writer.fps:g} fps)")
    elif writer is not None:
        print(f"no frame was ingested: {writer.path} not written")
    return 0
