"""`stc run`: answer questions about a video with and without STC, and show where time goes."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """Stream a video through a VideoLLM (ReKV-style engine), ask questions at the end,
and print the answers with and without STC plus stage timings and token counts."""


def register(subparsers, add_stc_options) -> None:
    parser = subparsers.add_parser("run", help="answer questions about a video, with and without STC", description=DESCRIPTION)
    parser.add_argument("--model", required=True, help="local checkpoint folder (LLaVA-OneVision / Qwen2-VL family)")
    parser.add_argument("--video", required=True, help="video file")
    parser.add_argument("--question", action="append", required=True, help="question (repeat for several)")
    parser.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video (default 1)")
    parser.add_argument("--max-frames", type=int, default=None, help="use at most this many frames")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--n-local", type=int, default=15000, help="engine: sliding window in tokens")
    parser.add_argument("--topk", type=int, default=64, help="engine: frames retrieved per question")
    add_stc_options(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from stc.cli import resolve_dtype

    from .loading import CheckpointError, load_checkpoint
    from .video import VideoError, sample_video

    try:
        video = sample_video(args.video, fps=args.fps, max_frames=args.max_frames)
        model, processor = load_checkpoint(args.model, args.device, resolve_dtype(args.dtype, args.device))
    except (VideoError, CheckpointError, ValueError) as exc:
        print(f"stc run: {exc}", file=sys.stderr)
        return 2
    print(f"video: {args.video}: {len(video.frames)} frames at {args.fps:g} fps ({video.duration:.1f} s long)")
    runs = [("dense", None)] if args.stc_config is None else [("dense", None), ("stc", args.stc_config)]
    for _, config in runs:  # warm-up (first calls allocate and pick kernels); not measured
        warm_up(model, processor, video, args.question[0], config)
    results = {name: run_stream(model, processor, video, args.question, config, args) for name, config in runs}
    for i, question in enumerate(args.question):
        print(f"\nQ: {question}")
        for name, result in results.items():
            print(f"  {name:>5}: {result['answers'][i]}")
    print()
    print(format_table(results))
    return 0


def warm_up(model, processor, video, question, config) -> None:
    from .engine import StreamingSession

    with StreamingSession(model, processor, config=config) as session:
        session.append_frames(video.frames[:2])
        session.ask(question, max_new_tokens=1)


def run_stream(model, processor, video, questions, config, args) -> dict:
    """Ingest the frames, ask every question; return answers, timings and token counts."""
    import stc

    from .engine import StreamingSession

    with StreamingSession(
        model, processor, config=config, n_local=args.n_local, topk=args.topk, sample_fps=args.fps,
        max_new_tokens=args.max_new_tokens,
    ) as session:
        ingest = session.append_frames(video.frames, timestamps=video.timestamps)
        answers = [session.ask(q) for q in questions]
        stats = stc.stats(model)
        memory = session.memory()
    frames = max(ingest.frames, 1)
    return {
        "answers": [a.text for a in answers],
        "rows": {
            "ViT + projector + selection (ms/frame)": 1000 * ingest.encode_s / frames,
            "LLM prefill of frames (ms/frame)": 1000 * ingest.prefill_s / frames,
            "retrieval (ms/question)": 1000 * _mean(a.timings["retrieval_s"] for a in answers),
            "answer prefill (ms/question)": 1000 * _mean(a.timings["prefill_s"] for a in answers),
            "decode (ms/question)": 1000 * _mean(a.timings["decode_s"] for a in answers),
            "ViT tokens recomputed (share)": 1 - stats["vit_reuse_ratio"],
            "LLM tokens per frame": ingest.tokens_kept / frames,
            "KV bytes per frame": memory["block_bytes_per_frame"],
        },
    }


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def format_table(results: dict) -> str:
    names = list(results)
    rows = list(next(iter(results.values()))["rows"])
    header = f"{'stage':<40}" + "".join(f"{n:>12}" for n in names) + ("   stc/dense" if len(names) > 1 else "")
    lines = [header, "-" * len(header)]
    for row in rows:
        values = [results[n]["rows"][row] for n in names]
        line = f"{row:<40}" + "".join(f"{v:>12.4g}" for v in values)
        if len(values) > 1 and values[0]:
            line += f"{values[1] / values[0]:>12.2f}"
        lines.append(line)
    return "\n".join(lines)
