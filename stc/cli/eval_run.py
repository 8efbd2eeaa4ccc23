"""`stc eval <benchmark> run`: stream a benchmark's videos through the engine and score.

    stc eval ovo-bench run --model PATH --anno FILE --video-root DIR --out DIR [STC options]
    stc eval streamingbench run --model PATH --anno FILE --video-root DIR --out DIR [--context all|60]

The out folder holds answers.jsonl (one line per answered query, written as soon as it exists),
run.json (the settings; a restart with other settings is refused instead of mixing results) and,
at the end, score.json. After Ctrl-C (exit status 130) the same command resumes. Launch with
`accelerate launch -m stc.eval ...` (or --num-shards / --shard-index) to split videos across
processes; answers are merged in query order.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stc.cli.options import add_stream_options
from stc.eval.reporting import EvalDataError
from stc.eval.settings import check_settings, memory_setting, model_setting

def add_run_options(parser: argparse.ArgumentParser, add_stc_options, video_root: bool = True) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder or preset name")
    if video_root:
        parser.add_argument("--anno", required=True, help="annotation file")
        parser.add_argument("--video-root", required=True, help="folder the annotation's video paths are relative to")
    parser.add_argument("--out", required=True, help="output folder (answers.jsonl, run.json, score.json)")
    parser.add_argument("--fps", type=float, default=1.0, help="frames sampled per second (default 1)")
    parser.add_argument("--tasks", nargs="+", help="only these tasks")
    parser.add_argument("--limit", type=int, help="only the first N queries")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--num-shards", type=int, default=None, help="split videos over N processes (default: accelerate's)")
    parser.add_argument("--shard-index", type=int, default=None, help="this process's shard (default: accelerate's)")
    parser.add_argument("--no-progress", action="store_true")
    add_stc_options(parser)
    add_stream_options(parser)


def add_ovo_bench_run(verbs, add_stc_options) -> None:
    parser = verbs.add_parser("run", help="stream the videos and answer every query at its time",
                              description=__doc__.split("\n\n")[0])
    add_run_options(parser, add_stc_options)
    parser.set_defaults(func=_run_ovo_bench)


def add_streamingbench_run(verbs, add_stc_options) -> None:
    parser = verbs.add_parser("run", help="stream the videos and answer every question at its time",
                              description=__doc__.split("\n\n")[0])
    add_run_options(parser, add_stc_options)
    parser.add_argument("--context", default="all", choices=["all", "60"],
                        help="all: the clip [0, t] (most papers); 60: [t-60, t] (the leaderboard)")
    parser.set_defaults(func=_run_streamingbench)


def _run_ovo_bench(args: argparse.Namespace) -> int:
    from stc.eval.ovo_bench import load_ovo_bench, score_ovo_bench

    def load():
        return load_ovo_bench(args.anno, tasks=args.tasks)

    def score(answers: Path):
        return score_ovo_bench([answers], anno=args.anno)

    return run_benchmark(args, "ovo-bench", load, score)


def _run_streamingbench(args: argparse.Namespace) -> int:
    from stc.eval.streamingbench import load_streamingbench, score_streamingbench

    context = "all" if args.context == "all" else int(args.context)

    def load():
        return load_streamingbench(args.anno, context=context, tasks=args.tasks)

    def score(answers: Path):
        return score_streamingbench(answers, anno=[args.anno])

    return run_benchmark(args, "streamingbench", load, score)


def _settings(args: argparse.Namespace, benchmark: str) -> dict:
    from stc.eval.presets import weights_fingerprint

    config = args.stc_config
    return {
        "benchmark": benchmark,
        "model": model_setting(args.model),
        "weights": weights_fingerprint(args.model),
        "anno": str(Path(args.anno).resolve()) if getattr(args, "anno", None) else None,
        "fps": args.fps,
        "n_local": args.n_local,
        "topk": args.topk,
        "memory": memory_setting(args.stream),
        "max_new_tokens": args.max_new_tokens,
        "context": getattr(args, "context", None),
        "stc": None if config is None else config.__dict__,
        "dtype": args.dtype,
    }


def shard_layout(args: argparse.Namespace):
    """(num_shards, shard_index, distributed state or None): flags first, else accelerate's."""
    if args.num_shards is not None or args.shard_index is not None:
        shards, index = args.num_shards or 1, args.shard_index or 0
        if not 0 <= index < shards:
            raise EvalDataError(f"--shard-index must be in [0, {shards}), got {index}")
        return shards, index, None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # CPU: gloo across torchrun/accelerate processes
    return state.num_processes, state.process_index, state if state.num_processes > 1 else None


def make_session_factory(model, processor, args):
    from stc.integrations.engine.session import StreamingSession

    def make():
        return StreamingSession(model, processor, config=args.stc_config, **args.stream,
                                sample_fps=args.fps, max_new_tokens=args.max_new_tokens)

    return make


def run_benchmark(args: argparse.Namespace, benchmark: str, load, score) -> int:
    """Load queries, answer what is missing in --out (this shard's videos), merge, score."""
    from stc.eval.presets import check_memory_budget, load_model
    from stc.integrations.loading import CheckpointError, resolve_dtype

    from stc.eval.runner import merge_shards, run_resumable

    out = Path(args.out)
    try:
        queries = load()
        if args.limit is not None:
            queries = queries[: args.limit]
        check_videos_present(queries, args.video_root)
        shards, index, distributed = shard_layout(args)
        check_settings(out, _settings(args, benchmark))
        device = str(distributed.device) if distributed is not None and distributed.device.type == "cuda" else args.device
        check_memory_budget(args.model, args.memory_budget, resolve_dtype(args.dtype, device))
        model, processor, description = load_model(args.model, device, resolve_dtype(args.dtype, device))
    except (EvalDataError, CheckpointError, ValueError, OSError) as exc:
        print(f"stc eval: error: {exc}", file=sys.stderr)
        return 2
    _audio_notice(queries)
    print(f"{benchmark}: {len(queries)} queries over {len({q.video for q in queries})} videos; {description}; "
          f"STC {'off' if args.stc_config is None else args.stc_config}", file=sys.stderr)
    summary = run_resumable(
        queries, make_session_factory(model, processor, args), args.video_root, out, fps=args.fps,
        max_new_tokens=args.max_new_tokens, num_shards=shards, shard_index=index, progress=not args.no_progress,
    )
    if summary is None:  # Ctrl-C: what is answered is on disk
        return 130
    print(f"answered {summary.answered} queries over {summary.videos} videos in {summary.seconds:.0f} s; "
          f"{summary.skipped_answered} already answered; {len(summary.missing_videos)} videos missing or unreadable",
          file=sys.stderr)
    for video in summary.missing_videos:
        print(f"  missing or unreadable: {video}", file=sys.stderr)
    if distributed is not None:
        distributed.wait_for_everyone()
        if not distributed.is_main_process:
            return 0
    elif shards > 1:
        print(f"shard {index + 1}/{shards} done; run again without --num-shards to merge and score", file=sys.stderr)
        return 0
    answers = merge_shards(queries, out)
    try:
        report = score(answers)
    except EvalDataError as exc:
        print(f"stc eval: nothing scored yet: {exc}", file=sys.stderr)
        return 0
    print(report.to_text())
    (out / "score.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0


def check_videos_present(queries, video_root) -> None:
    """EvalDataError when not one of the queries' videos is under `video_root` (a wrong or empty
    folder would otherwise skip every video and score nothing)."""
    videos = sorted({q.video for q in queries})
    if videos and not any((Path(video_root) / video).is_file() for video in videos):
        raise EvalDataError(f"--video-root {video_root}: none of the {len(videos)} videos the annotation names is there "
                            f"(the first is {videos[0]})")


def _audio_notice(queries) -> None:
    audio = sum(1 for q in queries if q.extra.get("needs_audio"))
    if audio:
        print(f"note: {audio} queries belong to tasks that need audio; audio is out of scope and they are answered "
              "from the video alone", file=sys.stderr)
