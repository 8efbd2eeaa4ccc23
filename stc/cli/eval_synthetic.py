"""`stc eval synthetic`'s command line (the benchmark itself is stc.eval.synthetic.benchmark)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stc.cli.options import add_stream_options
from stc.errors import ConfigError
from stc.eval.reporting import EvalDataError, compare_reports
from stc.eval.settings import model_setting
from stc.eval.synthetic import benchmark
from stc.eval.synthetic.benchmark import (DEFAULT_OUT, config_tag, blank, evaluate, frames_tag, ground_truth_run,
                                          kept_on_objects, prepare_benchmark, scene_config, tokens_per_frame,
                                          trained_generator)
from stc.eval.synthetic.retention import LONG_SETTING
from stc.eval.synthetic.scene import GENERATORS, SceneConfig

DEFAULT_EVIDENCE_METHODS = "dense,random,uniform,oracle,evidence-oracle"


def main(args: argparse.Namespace) -> int:
    from stc.eval.presets import check_memory_budget, load_model
    from stc.eval.testbed import TESTBED_DIR
    from stc.integrations.loading import resolve_dtype

    if args.n < 1 or args.seed < 0:
        raise ConfigError("--n must be >= 1 and --seed >= 0")
    if args.long:
        long_setting(args)
    model_generator = choose_generator(args)
    if args.placement and args.stc_config is None:  # --no-stc or --method dense
        raise ConfigError("--placement measures a compressing method's kept tokens; name one "
                          "(not --no-stc or --method dense)")
    try:
        scene = scene_config(args.frames, args.generator)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    modes = [flag for flag, on in (("--time-only", args.time_only), ("--evidence", args.evidence)) if on]
    others = [flag for flag, on in (("--blind", args.blind), ("--shuffle-frames", args.shuffle_frames),
                                    ("--placement", args.placement)) if on]
    if modes and len(modes + others) > 1:
        raise ConfigError(f"{modes[0]} is a run of its own: it does not combine with {(modes + others)[1]}")
    if args.shuffle_frames:
        check_shuffle_frames(args, others)
    if args.floor and modes:
        raise ConfigError(f"{modes[0]} is a run of its own: it does not combine with --floor")
    if args.floor and args.stc_config is None:
        raise ConfigError("--floor reports a method's accuracy above a floor run; name one (not --no-stc or --method dense)")
    floor = read_floor(args.floor) if args.floor else None  # a bad file is refused before the model loads
    if args.time_only:
        return time_only_main(args, scene)
    if args.evidence:
        runs = evidence_runs(args)  # bad --methods or --budgets are refused before the model loads
    out = Path(args.out)
    check_memory_budget(args.model or TESTBED_DIR, args.memory_budget, resolve_dtype(args.dtype, args.device))
    model, processor, description = load_model(args.model or TESTBED_DIR, args.device, resolve_dtype(args.dtype, args.device))
    if args.evidence:
        return evidence_main(args, runs, scene, model, processor, description)
    try:
        video_root, queries = prepare_benchmark(out, args.seed, args.n, scene, args.shuffle_frames)
    except OSError as exc:
        raise EvalDataError(f"{out}: cannot write the episodes ({exc.strerror})") from None
    print(f"synthetic testbed: {len(queries)} questions over {args.n} held-out episodes; {description}", file=sys.stderr)
    placement = None
    if args.placement:  # first: a model without a square token grid is refused before the long runs
        try:
            placement = kept_on_objects(model, processor, args.stc_config, args.seed, args.n, not args.no_progress,
                                        scene)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    tag = (f"seed{args.seed}-n{args.n}{frames_tag(scene)}" + ("-blind" if args.blind else "")
           + ("-shuffled" if args.shuffle_frames else ""))
    viewing = " (blind)" if args.blind else " (shuffled frames)" if args.shuffle_frames else ""
    frame_filter = blank if args.blind else None
    baseline = evaluate(model, processor, queries, video_root, out / f"dense-{tag}", None, args, frame_filter)
    if baseline is None:
        return 130
    reports = {"dense": baseline}
    if args.stc_config is not None:
        label = args.method if not args.no_stc else "dense"
        method_dir = out / f"{label}-{config_tag(args.stc_config)}-{tag}"
        hook, method_filter = ground_truth_run(args.stc_config, video_root, args.seed, args.n, scene, frame_filter)
        with hook:
            reports[label] = evaluate(model, processor, queries, video_root, method_dir, args.stc_config, args,
                                      method_filter)
        if reports[label] is None:
            return 130
    for name, report in reports.items():
        print(f"\n== {name}{viewing} ==")
        print(report.to_text())
    compressed = reports[list(reports)[-1]]
    comparison = compare_reports(baseline, compressed, ("dense", list(reports)[-1]), floor) if len(reports) > 1 else None
    if comparison is not None:  # with the paired test of the method against dense and retained's interval
        print()
        print(comparison.to_text())
    if placement is not None:
        print(f"\nkept tokens on objects: {placement['kept_share']:.1f}% (objects cover "
              f"{placement['object_cells_share']:.1f}% of cells; {placement['kept_tokens']} tokens kept over "
              f"{placement['frames']} frames)")
    if args.json:
        data = compressed.to_json()
        data["method"] = list(reports)[-1]
        data["config"] = None if args.stc_config is None else args.stc_config.__dict__
        data["baseline"] = baseline.to_json()
        data["retained"] = 100.0 * compressed.overall / baseline.overall if baseline.overall else None
        paired = None if comparison is None else comparison.paired()[0]
        data["retained_ci"] = None if paired is None else paired.retained_ci
        data["paired"] = None if paired is None else paired.to_json()  # method - dense: difference, ci, p_value
        data["model"] = model_setting(args.model or TESTBED_DIR)  # the checkpoint folder or preset name
        data["tokens_per_frame"] = tokens_per_frame(model, processor, video_root / queries[0].video)
        data["questions"] = len(queries)
        data["blind"] = args.blind
        data["shuffled_frames"] = args.shuffle_frames
        data["generator"] = scene.version
        data["model_generator"] = model_generator  # what the model was trained on (None: no training record)
        if comparison is not None and floor is not None:  # (acc - floor) / (dense - floor), overall
            data["floor"] = {"source": args.floor, "overall": floor.overall,
                             "above_floor": comparison.to_json()["overall"]["above_floor"]}
        data["frames"] = scene.frames  # per episode (--frames)
        data["placement"] = placement
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


def choose_generator(args: argparse.Namespace) -> int | None:
    """Set `args.generator`: --generator, else the one the model was trained on (its training
    record), else the shipped benchmark's. A --generator other than the model's is a warning on
    stderr, not a refusal (a model on another generator's questions is a legitimate measurement,
    but not its own benchmark). Returns the model's generator (None: no training record)."""
    from stc.eval.testbed import TESTBED_DIR

    model = args.model or TESTBED_DIR
    trained = trained_generator(model)
    if args.generator is None:
        args.generator = SceneConfig().version if trained is None else trained
    elif trained is not None and trained != args.generator:
        print(f"{args.command_name}: warning: --generator {args.generator}, but {model} was trained on generator "
              f"{trained} episodes (leave --generator out to use the model's)", file=sys.stderr)
    return trained


def long_setting(args: argparse.Namespace) -> None:
    """`--long`: the long-episode setting (`LONG_SETTING`: episodes of many frames, a window of a
    few, a small topk, so that retrieval decides what a question sees) for each of --frames,
    --n-local and --topk left at its default."""
    from stc.integrations.engine.options import DEFAULTS

    if args.frames == SceneConfig().frames:
        args.frames = LONG_SETTING["frames"]
    for name in ("n_local", "topk"):
        if getattr(args, name) == getattr(DEFAULTS, name):
            setattr(args, name, LONG_SETTING[name])
            args.stream[name] = LONG_SETTING[name]


def check_shuffle_frames(args: argparse.Namespace, others: list[str]) -> None:
    """--shuffle-frames is a model run on reordered videos: ConfigError for what cannot follow it
    (blanked frames, the placement pass and the oracle read the episodes in their own order)."""
    from stc.peers import MethodConfig

    clash = [flag for flag in others if flag != "--shuffle-frames"]
    if clash:
        raise ConfigError(f"--shuffle-frames does not combine with {clash[0]}")
    if isinstance(args.stc_config, MethodConfig) and args.stc_config.selector.needs_ground_truth:
        raise ConfigError(f"--shuffle-frames does not combine with --method {args.stc_config.method} "
                          "(it reads the scene in its own order)")


def read_floor(path: str):
    """The floor run's report (a score JSON of `stc eval synthetic --json`, e.g. with
    --shuffle-frames); EvalDataError for a file that is none."""
    from stc.eval.reporting import Report, read_json

    data = read_json(path)
    if not (isinstance(data, dict) and "overall" in data and "tasks" in data):
        raise EvalDataError(f"{path}: not a score JSON (stc eval synthetic --json writes one)")
    return Report.from_json(data, source=path)


def evidence_runs(args: argparse.Namespace) -> list:
    """The ER runner's runs (methods x budgets); ConfigError for a bad list."""
    from stc.eval.synthetic.retention import budget_runs, evidence_methods

    try:
        budgets = [float(text) for text in args.budgets.split(",") if text.strip()]
    except ValueError:
        raise ConfigError(f"--budgets must be numbers in (0, 1] separated by commas, got {args.budgets!r}") from None
    if not budgets or not all(0 < b <= 1 for b in budgets):
        raise ConfigError(f"--budgets must be numbers in (0, 1] separated by commas, got {args.budgets!r}")
    if args.draws < 1:
        raise ConfigError(f"--draws must be >= 1, got {args.draws}")
    try:
        return budget_runs(evidence_methods(args.methods), budgets, args.draws)
    except ValueError as exc:
        raise ConfigError(f"--methods: {exc}") from None


def evidence_main(args: argparse.Namespace, runs: list, scene: SceneConfig, model, processor, description: str) -> int:
    """`--evidence`: evidence retention of every run over the held-out episodes, as a table (and
    JSON / markdown files)."""
    from stc.eval.synthetic.retention import held_out_episodes, measure_retention, retention_table
    from stc.eval.testbed import TESTBED_DIR

    episodes = held_out_episodes(args.seed, args.n, scene)
    questions = sum(len(e.queries) for e in episodes)
    print(f"evidence retention: {questions} questions over {args.n} held-out episodes, {len(runs)} runs; {description}",
          file=sys.stderr)
    try:
        results = measure_retention(model, processor, runs, episodes, progress=not args.no_progress,
                                    session=args.stream)
    except ValueError as exc:  # a model whose frames are no square grid or not one block each
        raise ConfigError(str(exc)) from None
    print(retention_table(results))
    for note in sorted({note for result in results for note in result.report.notes}):
        print(f"note: {note}")
    if args.markdown:
        Path(args.markdown).write_text(retention_table(results, markdown=True) + "\n")
    if args.json:
        data = {"benchmark": "synthetic evidence retention", "episodes": args.n, "seed": args.seed,
                "frames": scene.frames, "generator": scene.version, "stream": args.stream, "questions": questions,
                "model": model_setting(args.model or TESTBED_DIR),
                "runs": [result.to_json() for result in results]}
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


def time_only_main(args: argparse.Namespace, scene: SceneConfig) -> int:
    """`--time-only`: the time-only guesser's accuracy against chance, then the value guesser's
    (the task and the options' values only) in one line (no model, no video)."""
    from stc.eval.synthetic.priors import ValueGuesser, floor_report, time_only_report

    if args.train_episodes < 1:
        raise ConfigError(f"--train-episodes must be >= 1, got {args.train_episodes}")
    report, chance = time_only_report(args.train_episodes, args.seed, args.n, scene)
    value_report, _ = floor_report(ValueGuesser, args.train_episodes, args.seed, args.n, scene)
    print(report.to_text())
    rows = [*report.categories, "all"]

    def against_chance(floor) -> dict:
        score = {**floor.categories, "all": floor.overall}
        return {name: score[name] - chance[name] for name in rows}

    for name, floor in (("time-only", report), ("value-only", value_report)):
        above = against_chance(floor)
        print(f"\n{name}: " + "  ".join(f"{row}: {chance[row] + above[row]:.1f} vs chance {chance[row]:.1f} "
                                        f"({above[row]:+.1f})" for row in rows))
    if args.json:
        data = {**report.to_json(), "chance": chance, "above_chance": against_chance(report),
                "value_only": {**value_report.to_json(), "above_chance": against_chance(value_report)},
                "train_episodes": args.train_episodes, "episodes": args.n, "seed": args.seed, "frames": scene.frames,
                "generator": scene.version}
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


def add_synthetic(benchmarks, add_stc_options) -> None:
    parser = benchmarks.add_parser("synthetic", help="the synthetic testbed with and without STC (CPU, minutes)",
                                   description=benchmark.__doc__.split("\n\n")[0],
                                   epilog="--method also takes oracle and evidence-oracle here (only here: they read "
                                          "the scene). oracle: the tokens on objects first, the rest of the budget at "
                                          "random. evidence-oracle: the cells of the questions' evidence first, then "
                                          "changed object cells, then random; the questions of an episode share one "
                                          "stream, so a frame keeps the union of the evidence all of them have in it "
                                          "(as in --evidence, so ER and accuracy describe the same tokens)")
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the shipped testbed model)")
    parser.add_argument("--seed", type=int, default=0, help="first held-out episode (default 0)")
    parser.add_argument("--n", type=int, default=100,
                        help="number of held-out episodes, ~10 questions each (default 100; on 40, a comparison "
                             "of two methods moves by several points)")
    parser.add_argument("--frames", type=int, default=SceneConfig().frames,
                        help=f"frames per episode, 1 a second (default {SceneConfig().frames}; other lengths get "
                             "their own folders)")
    parser.add_argument("--long", action="store_true",
                        help="the long-episode setting, where retrieval decides what a question sees: --frames "
                             f"{LONG_SETTING['frames']} --n-local {LONG_SETTING['n_local']} --topk {LONG_SETTING['topk']} "
                             "(each unless given), for --evidence and for model runs")
    parser.add_argument("--generator", type=int, choices=GENERATORS, default=None,
                        help="question generator (default: the model's, from its training.json; 2 without one): "
                             "2 (the shipped benchmark) or 3 (questions whose time does not "
                             "give their answer away; other folders)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"working folder (default {DEFAULT_OUT})")
    parser.add_argument("--blind", action="store_true", help="blank every frame (a chance-level check)")
    parser.add_argument("--shuffle-frames", action="store_true",
                        help="show each episode's frames in a seeded random order, questions unchanged: the floor "
                             "of a model that sees the pictures but not their order (its own folders)")
    parser.add_argument("--floor", metavar="FILE",
                        help="a floor run's --json (e.g. --shuffle-frames): also report (acc - floor) / (dense - floor)")
    parser.add_argument("--placement", action="store_true",
                        help="also report the share of kept tokens on object cells (one more pass over the frames)")
    parser.add_argument("--json", metavar="FILE", help="write the compressed run's scores (and the baseline) as JSON")
    evidence = parser.add_argument_group("evidence retention (--evidence: no answer decoded)")
    evidence.add_argument("--evidence", action="store_true",
                          help="measure, without decoding, the share of questions whose evidence each method keeps")
    evidence.add_argument("--methods", default=DEFAULT_EVIDENCE_METHODS,
                          help="methods as in stc bench --methods, plus oracle and evidence-oracle (the questions' evidence "
                               f"first) (default {DEFAULT_EVIDENCE_METHODS})")
    evidence.add_argument("--budgets", default="0.5,0.3,0.15", help="keep ratios (default 0.5,0.3,0.15)")
    evidence.add_argument("--draws", type=int, default=3,
                          help="draws of a seeded method (random, oracle), each episode with its own seed (default 3)")
    evidence.add_argument("--markdown", metavar="FILE", help="also write the table as markdown")
    parser.add_argument("--time-only", action="store_true",
                        help="score the time-only guesser (answer frequencies per task and question frame from "
                             "training episodes) and the value guesser (how often each option value is right, per "
                             "task) against chance: the floors; no model")
    parser.add_argument("--train-episodes", type=int, default=4000,
                        help="training episodes the time-only guesser learns from (default 4000)")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--no-progress", action="store_true")
    add_stc_options(parser)
    add_stream_options(parser)
    parser.set_defaults(func=main, ground_truth=True)  # --method oracle: this benchmark knows the scene

