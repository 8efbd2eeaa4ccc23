"""`stc eval`: score benchmark results and compare score reports.

    stc eval ovo-bench score PATH... [--anno FILE] [--json FILE] [--missing-as-wrong]
    stc eval streamingbench score PATH... [--model-key NAME] [--anno FILE]... [--lenient] [--json FILE]
    stc eval compare A B [--anno FILE]... [--model-key NAME] [--labels A B] [--json FILE]

`compare` adds 95% confidence intervals and a paired test (eval/statistics.py) when both sides
carry per-question outcomes: answers JSONL scored against --anno (each question's video is its
cluster), or score JSONs that hold "outcomes" (`stc eval synthetic --json`). Aggregate score
reports and official output files have none; compare then says so instead of guessing.

Each benchmark has its own sub-parser of verbs (`benchmark_verbs`), so more verbs (e.g. `run`)
can be added next to `score`. Only light modules are imported here (no torch/transformers).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

from stc.cli.eval_run import add_ovo_bench_run, add_streamingbench_run
from stc.eval.ovo_bench import score_ovo_bench, score_ovo_bench_models
from stc.eval.reporting import EvalDataError, Report, compare_reports, read_json
from stc.eval.streamingbench import score_streamingbench
from stc.cli.eval_synthetic import add_synthetic


def register(subparsers: argparse._SubParsersAction, add_stc_options: Callable) -> None:
    """Add `eval` to the `stc` command (see stc.cli.COMMANDS)."""
    parser = subparsers.add_parser(
        "eval", help="run and score OVO-Bench / StreamingBench / the synthetic testbed, compare reports",
        description="Run benchmarks through the streaming engine, score results (official output files or this "
                    "project's answers) and compare reports.",
    )
    benchmarks = parser.add_subparsers(dest="eval_command", metavar="BENCHMARK")
    benchmarks.required = True
    ovo_verbs = benchmark_verbs(benchmarks, "ovo-bench", "OVO-Bench (CVPR 2025)")
    add_ovo_bench_score(ovo_verbs)
    add_ovo_bench_run(ovo_verbs, add_stc_options)
    streamingbench_verbs = benchmark_verbs(benchmarks, "streamingbench", "StreamingBench")
    add_streamingbench_score(streamingbench_verbs)
    add_streamingbench_run(streamingbench_verbs, add_stc_options)
    add_compare(benchmarks)
    add_synthetic(benchmarks, add_stc_options)


def benchmark_verbs(benchmarks: argparse._SubParsersAction, name: str, title: str) -> argparse._SubParsersAction:
    """The sub-parser of `stc eval NAME`, ready for verbs (score, run, ...)."""
    parser = benchmarks.add_parser(name, help=f"{title}: run or score", description=f"{title} evaluation.")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    return verbs


def add_ovo_bench_score(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "score", help="score official output files or answers JSONL",
        description="Score OVO-Bench with the official rules. PATH: official raw output files "
                    "(or their directory) or this project's answers *.jsonl (needs --anno). Results of "
                    "several models (their folders, or a folder of model folders such as results/) "
                    "get one report each.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="results file(s) or directory")
    parser.add_argument("--anno", metavar="FILE", help="annotation file ovo_bench_new.json (for answers JSONL)")
    parser.add_argument("--missing-as-wrong", action="store_true",
                        help="score unanswered queries as wrong instead of leaving them out")
    parser.add_argument("--json", metavar="FILE", help='also write the score report as JSON (several models: '
                                                      '{"models": {model: report}})')
    parser.set_defaults(func=_score_ovo_bench)


def add_streamingbench_score(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "score", help="score official output files or answers JSONL",
        description="Score StreamingBench with the official rules. PATH: official output files (a "
                    "question file with responses under a model key) or answers *.jsonl (needs --anno).",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="results file(s)")
    parser.add_argument("--model-key", metavar="NAME", help="model whose responses to score (official format)")
    parser.add_argument("--anno", metavar="FILE", action="append",
                        help="question file(s) questions_*.json the answers belong to (repeatable)")
    parser.add_argument("--lenient", action="store_true",
                        help="strip whitespace before reading the answer letter (not the official rule, "
                             "which scores ' A' wrong; the report says 'lenient scoring')")
    parser.add_argument("--json", metavar="FILE", help="also write the score report as JSON")
    parser.set_defaults(func=_score_streamingbench)


def add_compare(benchmarks: argparse._SubParsersAction) -> None:
    parser = benchmarks.add_parser(
        "compare", help="two results side by side (per-task delta, accuracy retained)",
        description="Compare B against A. Each is a score JSON written by --json, or anything "
                    "`score` accepts (OVO-Bench or StreamingBench results). When both carry per-question "
                    "outcomes (answers JSONL with --anno; score JSONs with \"outcomes\", e.g. from "
                    "`stc eval synthetic --json`), also 95% confidence intervals (bootstrap over videos or "
                    "episodes) and a paired test of B - A on the questions both answered.",
    )
    parser.add_argument("a", metavar="A", help="baseline: score JSON or results")
    parser.add_argument("b", metavar="B", help="compared: score JSON or results")
    parser.add_argument("--anno", metavar="FILE", action="append", help="annotation/question file(s) for answers JSONL")
    parser.add_argument("--model-key", metavar="NAME", help="model key for StreamingBench official outputs")
    parser.add_argument("--labels", nargs=2, metavar=("A", "B"), help="column names (default: file names)")
    parser.add_argument("--floor", metavar="FILE",
                        help="a floor run (score JSON or results, e.g. stc eval synthetic --shuffle-frames --json): "
                             "also the retention above it, (B - floor) / (A - floor)")
    parser.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    parser.set_defaults(func=_compare)


def _reporting_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input files end the command with a one-line message and exit status 2."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except EvalDataError as exc:
            print(f"stc eval: error: {exc}", file=sys.stderr)
            return 2

    return run


@_reporting_errors
def _score_ovo_bench(args: argparse.Namespace) -> int:
    reports = score_ovo_bench_models(args.paths, anno=args.anno, missing_as_wrong=args.missing_as_wrong)
    if len(reports) == 1:
        return _emit(reports[0].to_text(), reports[0].to_json(), args.json)
    width = max(len(r.model) for r in reports)
    table = "\n".join(f"{r.model:{width}s}  {r.summary_line()}" for r in reports)
    text = "\n\n".join([*(r.to_text() for r in reports), table])
    return _emit(text, {"benchmark": reports[0].benchmark, "models": {r.model: r.to_json() for r in reports}},
                 args.json)


@_reporting_errors
def _score_streamingbench(args: argparse.Namespace) -> int:
    report = score_streamingbench(args.paths, anno=args.anno, model_key=args.model_key, lenient=args.lenient)
    return _emit(report.to_text(), report.to_json(), args.json)


@_reporting_errors
def _compare(args: argparse.Namespace) -> int:
    baseline = load_report(args.a, anno=args.anno, model_key=args.model_key)
    other = load_report(args.b, anno=args.anno, model_key=args.model_key)
    labels = tuple(args.labels) if args.labels else (_label(args.a), _label(args.b))
    if labels[0] == labels[1]:
        labels = (str(args.a), str(args.b))
    floor = None if args.floor is None else load_report(args.floor, anno=args.anno, model_key=args.model_key)
    comparison = compare_reports(baseline, other, labels, floor)
    return _emit(comparison.to_text(), comparison.to_json(), args.json)


def load_report(path: str, anno: list[str] | None = None, model_key: str | None = None) -> Report:
    """A Report from a score JSON, or by scoring results of whichever benchmark they are."""
    path_ = Path(path)
    if not path_.exists():
        raise EvalDataError(f"{path}: no such file or directory")
    if path_.is_file() and path_.suffix == ".json":
        data = read_json(path_)
        if isinstance(data, dict) and "models" in data:
            raise EvalDataError(f"{path}: holds the reports of {len(data['models'])} models; compare needs one "
                                "model's report")
        if isinstance(data, dict) and "overall" in data and "tasks" in data:
            return Report.from_json(data, source=str(path))
        if isinstance(data, list):
            return score_streamingbench(path_, anno=anno, model_key=model_key)
        return score_ovo_bench(path_)
    has_answers = path_.suffix == ".jsonl" or (path_.is_dir() and any(path_.glob("*.jsonl")))
    if not has_answers:
        return score_ovo_bench(path_)
    if not anno:
        raise EvalDataError(f"{path}: answers need --anno (ovo_bench_new.json or questions_*.json)")
    if _is_ovo_bench_annotation(anno[0]):
        return score_ovo_bench(path_, anno=anno[0])
    return score_streamingbench(path_, anno=anno)


def _is_ovo_bench_annotation(path: str) -> bool:
    data = read_json(path)
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "task" in data[0]


def _label(path: str) -> str:
    name = Path(path).name
    return Path(name).stem if name.endswith((".json", ".jsonl")) else name


def _emit(text: str, data: dict, json_path: str | None) -> int:
    print(text)
    if json_path:
        try:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(json_path).write_text(json.dumps(data, indent=2) + "\n")
        except OSError as exc:
            raise EvalDataError(f"{json_path}: cannot write ({exc.strerror})") from None
    return 0
