"""`stc run`: answer questions about a video with and without STC, and show where time goes.

With no arguments it runs the shipped testbed model (a small LLaVA-OneVision trained on the
synthetic benchmark) on a generated synthetic stream and asks some of that stream's questions at
their times, so the answers can be checked against the ground truth.
"""

from __future__ import annotations

import argparse

from stc.cli.options import user_errors
from stc.integrations.demo.questions import TimedQuestion

DESCRIPTION = """Stream a video through a VideoLLM (ReKV-style engine), ask questions, and print
the answers with and without STC plus stage timings and token counts. Without --model/--video:
the shipped testbed model on a generated synthetic stream with its own questions."""


def register(subparsers, add_stc_options) -> None:
    from stc.cli.options import add_stream_options, positive

    parser = subparsers.add_parser("run", help="answer questions about a video, with and without STC", description=DESCRIPTION)
    parser.add_argument("--model", default=None, help="checkpoint folder or preset (default: the shipped testbed model)")
    parser.add_argument("--video", default=None, help="video file (default: a generated synthetic stream)")
    parser.add_argument("--question", action="append", help="question asked at the end (repeatable)")
    parser.add_argument("--fps", type=positive(float), default=1.0, help="frames sampled per second of video (default 1)")
    parser.add_argument("--max-frames", type=positive(int), default=None,
                        help="use at most this many frames (of the generated stream: only its questions within them)")
    parser.add_argument("--seed", type=int, default=0, help="held-out synthetic episode shown by default (default 0)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    add_stc_options(parser)
    add_stream_options(parser)
    parser.set_defaults(func=main)


def _truth(query) -> str:
    """The ground truth as printed: for multiple choice the letter and the option it names."""
    return f"{query.answer}. {query.extra['answer_text']}" if query.kind == "mc" else query.answer


def synthetic_stream(seed: int, max_frames: int | None = None, count: int = 4):
    """Frames, timestamps and a spread of questions (with answers) of a held-out episode; with
    max_frames, its first frames and only the questions asked within them."""
    from stc.eval.synthetic.episodes import episode_seed, generate_episode

    episode = generate_episode(episode_seed("eval", seed))
    frames, times = episode.frames[:max_frames], episode.timestamps[:max_frames]
    queries = [q for q in episode.queries if q.time <= times[-1] + 1e-6]
    if not queries:
        first = episode.queries[0].time
        needed = sum(t <= first + 1e-6 for t in episode.timestamps)
        raise ValueError(f"--max-frames {max_frames} ends the generated stream at {times[-1]:g} s, before its first "
                         f"question (at {first:g} s): use --max-frames {needed} or more")
    picks = sorted({round(i * (len(queries) - 1) / max(count - 1, 1)) for i in range(count)})
    questions = [TimedQuestion(queries[i].time, queries[i].prompt, _truth(queries[i])) for i in picks]
    return frames, times, questions, f"synthetic episode {episode.seed} (held-out)"


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from stc.integrations.loading import resolve_dtype
    from stc.eval.testbed import TESTBED_DIR

    from stc.eval.presets import check_memory_budget, load_model
    from stc.integrations.video import sample_video

    model_name = args.model or TESTBED_DIR
    with user_errors():
        if args.video is None:
            if args.question:
                raise ValueError("--question needs --video (the generated stream brings its own questions)")
            frames, times, questions, source = synthetic_stream(args.seed, args.max_frames)
        else:
            if not args.question:
                raise ValueError("--video needs at least one --question")
            video = sample_video(args.video, fps=args.fps, max_frames=args.max_frames)
            frames, times, source = video.frames, video.timestamps, args.video
            questions = [TimedQuestion(float(times[-1]), q) for q in args.question]
        check_memory_budget(model_name, args.memory_budget, resolve_dtype(args.dtype, args.device))
        model, processor, description = load_model(model_name, args.device, resolve_dtype(args.dtype, args.device))
    print(f"model: {description}")
    if args.video is not None and args.model is None:
        from stc.cli.demo import testbed_note

        print(testbed_note(args.video))
    print(f"video: {source}: {len(frames)} frames, {float(times[-1]):.0f} s")
    runs = [("dense", None)] if args.stc_config is None else [("dense", None), ("stc", args.stc_config)]
    for _, config in runs:  # warm-up (first calls allocate and pick kernels); not measured
        warm_up(model, processor, frames, questions[0].text, config)
    results = {name: run_stream(model, processor, frames, np.asarray(times), questions, config, args) for name, config in runs}
    for i, question in enumerate(questions):
        print(f"\n[t={question.time:g} s] {question.text}")
        for name, result in results.items():
            print(f"  {name:>5}: {result['answers'][i]}{mark(result['answers'][i], question.truth)}")
        if question.truth is not None:
            print(f"  truth: {question.truth}")
    if any(q.truth is not None for q in questions):
        print("\n(an answer is scored by its first word, the option letter, Yes/No or the number, as "
              "`stc eval synthetic` scores it; the words after it are not scored)")
    print()
    print(format_table(results))
    if args.stc_config is not None:
        print(f"\nSTC settings: {args.stc_config}")
    return 0


def warm_up(model, processor, frames, question, config) -> None:
    from stc.integrations.engine.session import StreamingSession

    with StreamingSession(model, processor, config=config) as session:
        session.append_frames(frames[:2])
        session.ask(question, max_new_tokens=1)


def run_stream(model, processor, frames, times, questions: list[TimedQuestion], config, args) -> dict:
    """Ingest frames in time order, asking each question once its time is reached."""
    import stc

    from stc.integrations.engine.session import StreamingSession

    answers, timings = [], []
    encode = prefill = 0.0
    with StreamingSession(
        model, processor, config=config, sample_fps=args.fps, **args.stream,
        max_new_tokens=args.max_new_tokens,
    ) as session:
        ingested = 0
        for question in sorted(questions, key=lambda q: q.time):
            upto = int((times <= question.time + 1e-6).sum())
            if upto > ingested:
                report = session.append_frames(frames[ingested:upto], timestamps=times[ingested:upto])
                encode, prefill, ingested = encode + report.encode_s, prefill + report.prefill_s, upto
            answer = session.ask(question.text)
            answers.append(answer.text)
            timings.append(answer.timings)
        if ingested < len(frames):
            report = session.append_frames(frames[ingested:], timestamps=times[ingested:])
            encode, prefill = encode + report.encode_s, prefill + report.prefill_s
        stats = stc.stats(model)
        memory = session.memory()
        per_block = session.frames_per_block
    count = max(len(frames), 1)
    fewest, most = stc.api.kept_range(stats, per_block, stats["llm_tokens_kept"] / count)
    return {
        "answers": answers,
        "rows": {
            "ViT + projector + selection (ms/frame)": 1000 * encode / count,
            "LLM prefill of frames (ms/frame)": 1000 * prefill / count,
            "retrieval (ms/question)": 1000 * _mean(t["retrieval_s"] for t in timings),
            "answer prefill (ms/question)": 1000 * _mean(t["prefill_s"] for t in timings),
            "decode (ms/question)": 1000 * _mean(t["decode_s"] for t in timings),
            "ViT tokens recomputed (share)": 1 - stats["vit_reuse_ratio"],
            "LLM tokens per frame": stats["llm_tokens_kept"] / count,
            "LLM tokens per frame, fewest": fewest,
            "LLM tokens per frame, most": most,
            "KV per frame (KiB)": memory["block_bytes_per_frame"] / 1024,
        },
    }


def mark(answer: str, truth: str | None) -> str:
    """"  [right]" or "  [wrong]" after an answer when the truth is known: the first words compared."""
    if truth is None:
        return ""
    from stc.eval.synthetic.benchmark import first_word

    return "  [right]" if first_word(answer) == first_word(truth) else "  [wrong]"


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _number(value: float) -> str:
    """Four significant digits, never in exponent notation (65536.0 -> "65536", 0.0123 -> "0.0123")."""
    text = f"{value:.4g}"
    return f"{value:.0f}" if "e+" in text else (f"{value:.6f}".rstrip("0") if "e-" in text else text)


def format_table(results: dict) -> str:
    names = list(results)
    rows = list(next(iter(results.values()))["rows"])
    header = f"{'stage':<40}" + "".join(f"{n:>12}" for n in names) + ("   stc/dense" if len(names) > 1 else "")
    lines = [header, "-" * len(header)]
    for row in rows:
        values = [results[n]["rows"][row] for n in names]
        line = f"{row:<40}" + "".join(f"{_number(v):>12}" for v in values)
        if len(values) > 1 and values[0]:
            line += f"{values[1] / values[0]:>12.2f}"
        lines.append(line)
    return "\n".join(lines)
