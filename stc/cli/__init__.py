"""The `stc` command. Every subcommand shares the same STC options (`add_stc_options`)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from stc.config import PRUNER_BUDGETS, PRUNER_SCORINGS, STCConfig
from stc.errors import STCError
from stc.cli.options import change_threshold, check_device, cut_threshold, positive, stream_options
from stc.methods import CACHER_OPTIONS, METHODS, PRUNER_OPTIONS, SCORER_OPTIONS, method_config, options_used
from stc.peers import MethodConfig

# subcommand -> module with `register(subparsers, stc_options)`; imported only when needed.
COMMANDS = {
    "run": "stc.cli.run",
    "eval": "stc.cli.eval",
    "bench": "stc.cli.bench",
    "demo": "stc.cli.demo",
    "serve": "stc.cli.serve",
    "testbed": "stc.cli.testbed",
}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `PROG: error: MESSAGE`, with exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")



def add_stc_options(parser: argparse.ArgumentParser) -> None:
    """The STC options every subcommand accepts, with one spelling everywhere."""
    defaults = STCConfig()
    group = parser.add_argument_group("STC options")
    group.add_argument("--method", default="stc", help=f"compression method: {', '.join(METHODS)} (default stc; "
                       "peer methods take --keep-ratio as their budget, see stc.peers)")
    group.add_argument("--no-stc", action="store_true", help="switch STC off (same as --method dense)")
    group.add_argument("--cache-interval", type=int, default=defaults.cache_interval, metavar="N",
                       help=f"Cacher: every N-th frame is a reference frame (default {defaults.cache_interval})")
    group.add_argument("--update-ratio", type=float, default=defaults.update_ratio, metavar="R",
                       help=f"Cacher: share of tokens recomputed on other frames (default {defaults.update_ratio})")
    group.add_argument("--cut-threshold", type=cut_threshold, default=defaults.cut_threshold, metavar="S",
                       help="Cacher: a frame whose first-layer keys have mean cosine similarity below S to its "
                            f"reference's becomes a reference (scene cut); 'off' for periodic only (default {defaults.cut_threshold})")
    group.add_argument("--drift-threshold", type=cut_threshold, default=defaults.drift_threshold, metavar="S",
                       help="adaptive Cacher: a frame whose first-layer key similarity to its reference is below S "
                            "becomes a reference, and --cache-interval is the most frames one reference serves; "
                            "'off' for the periodic schedule (default off)")
    group.add_argument("--change-threshold", type=change_threshold, default=defaults.change_threshold, metavar="D",
                       help="adaptive Cacher: recompute as many tokens as changed (1 - key cosine > D at the first "
                            "layer), between --min-update-ratio and --update-ratio; 'off' for always --update-ratio (default off)")
    group.add_argument("--min-update-ratio", type=float, default=defaults.min_update_ratio, metavar="R",
                       help=f"adaptive Cacher: the change gate's floor share (default {defaults.min_update_ratio})")
    group.add_argument("--recompute-buckets", type=int, default=defaults.recompute_buckets, metavar="B",
                       help=f"adaptive Cacher: budget sizes the change gate rounds to (default {defaults.recompute_buckets})")
    group.add_argument("--share-selection", action="store_true",
                       help="adaptive Cacher: later layers reuse the first layer's recomputed tokens and cached keys")
    group.add_argument("--refresh-tokens", action="store_true",
                       help="adaptive Cacher: recomputed tokens refresh their entries of the reference")
    group.add_argument("--compile", action="store_true",
                       help="Cacher: run its blocks through torch.compile (compiles once per geometry, then replays)")
    group.add_argument("--keep-ratio", type=float, default=defaults.keep_ratio, metavar="K",
                       help=f"Pruner: share of visual tokens per frame kept for the LLM (default {defaults.keep_ratio})")
    group.add_argument("--alpha", type=float, default=defaults.alpha,
                       help=f"Pruner: weight of the temporal anchor, dual_anchor scoring only (default {defaults.alpha})")
    group.add_argument("--history-window", type=int, default=None, metavar="W",
                       help="Pruner: frames in the temporal anchor (default: all so far)")
    group.add_argument("--pruner-scoring", choices=PRUNER_SCORINGS, default=defaults.pruner_scoring,
                       help="Pruner: gaussian (the authors' release), dual_anchor (the paper), or the candidates "
                            "positional, change_novelty, motion, gaussian_positional, cacher_change (docs/pruner.md) "
                            f"(default {defaults.pruner_scoring})")
    group.add_argument("--novelty-weight", type=float, default=defaults.novelty_weight, metavar="W",
                       help="Pruner, change_novelty scoring only: weight of the novelty against each position's "
                            f"memory beside the change since the previous frame, in [0, 1] (default {defaults.novelty_weight})")
    group.add_argument("--motion-radius", type=positive(int), default=defaults.motion_radius, metavar="R",
                       help="Pruner, motion scoring only: grid steps a token's match in the previous frame may lie "
                            f"away (default {defaults.motion_radius}: 3x3)")
    group.add_argument("--mix-weight", type=float, default=defaults.mix_weight, metavar="W",
                       help="Pruner, gaussian_positional scoring only: positional change's share of the mix with "
                            f"the gaussian score, in [0, 1] (default {defaults.mix_weight})")
    group.add_argument("--coverage", type=float, default=defaults.coverage, metavar="C",
                       help="Pruner: priority a token position gains per frame it was not kept, in units of the "
                            "frame's score range; 0 for off (default 0)")
    group.add_argument("--pruner-budget", choices=PRUNER_BUDGETS, default=defaults.pruner_budget,
                       help="Pruner: fixed (round(n * keep ratio) tokens every frame) or adaptive (frames that changed "
                            "more keep more, repeated frames fewer, the mean held at the keep ratio; docs/pruner.md) "
                            f"(default {defaults.pruner_budget})")
    group.add_argument("--budget-floor", type=float, default=defaults.budget_floor, metavar="F",
                       help="Pruner, adaptive budget only: every frame keeps at least F x the fixed count, in [0, 1] "
                            f"(default {defaults.budget_floor:g}: one token)")
    group.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16", "float64"],
                       help="model dtype (default: float32 on CPU, bfloat16 on CUDA)")
    parser.set_defaults(command_name=parser.prog)  # names the command in main's errors about these options


def stc_config_from_args(args: argparse.Namespace) -> STCConfig | MethodConfig | None:
    """The STCConfig (or a peer method's MethodConfig) the shared options ask for; None means no
    compression (dense). ValueError for contradictory options: --no-stc with another --method, or a
    knob set (to other than its default) that the method does not use."""
    if args.no_stc and args.method not in ("stc", "dense"):
        raise ValueError(f"--no-stc contradicts --method {args.method} (--no-stc means --method dense)")
    method = "dense" if args.no_stc else args.method
    base = STCConfig(
        cache_interval=args.cache_interval,
        update_ratio=args.update_ratio,
        cut_threshold=args.cut_threshold,
        drift_threshold=args.drift_threshold,
        change_threshold=args.change_threshold,
        min_update_ratio=args.min_update_ratio,
        recompute_buckets=args.recompute_buckets,
        share_selection=args.share_selection,
        refresh_tokens=args.refresh_tokens,
        compile=args.compile,
        keep_ratio=args.keep_ratio,
        alpha=args.alpha,
        history_window=args.history_window,
        pruner_scoring=args.pruner_scoring,
        novelty_weight=args.novelty_weight,
        motion_radius=args.motion_radius,
        mix_weight=args.mix_weight,
        coverage=args.coverage,
        pruner_budget=args.pruner_budget,
        budget_floor=args.budget_floor,
    )
    # the oracle reads the scene: only a command that sets `ground_truth` (stc eval synthetic) has it
    config = method_config(method, base, ground_truth=getattr(args, "ground_truth", False))
    used = options_used(config)
    unused = [name for name in CACHER_OPTIONS + PRUNER_OPTIONS
              if name not in used and getattr(base, name) != getattr(STCConfig(), name)]
    if len(unused) == 1 and unused[0] in SCORER_OPTIONS and isinstance(config, STCConfig) and config.pruner:
        raise ValueError(f"{_flag(unused[0])} has no effect with --pruner-scoring {config.pruner_scoring} "
                         f"({SCORER_KNOB_ROLES[unused[0]]})")
    if unused == ["budget_floor"] and isinstance(config, STCConfig) and config.pruner:
        raise ValueError("--budget-floor has no effect without --pruner-budget adaptive (it bounds the adaptive budget only)")
    if unused:
        named = "--no-stc" if args.no_stc else f"--method {method}"
        uses = f"it uses only {', '.join(_flag(name) for name in used)}" if used else "dense: no STC option applies"
        raise ValueError(f"{_flag(unused[0])} has no effect with {named} ({uses})")
    return config


SCORER_KNOB_ROLES = {  # what a scorer's own knob does, for the "has no effect" refusal
    "alpha": "it weights the dual_anchor score only",
    "history_window": "it limits the gaussian, gaussian_positional and dual_anchor anchors only",
    "novelty_weight": "it weights the change_novelty score only",
    "motion_radius": "it sets the motion scorer's neighbourhood only",
    "mix_weight": "it weights the gaussian_positional mix only",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="stc", description="Streaming Token Compression for streaming VideoLLMs (STC-Cacher + STC-Pruner).",
        epilog="-v / --verbose (anywhere on the line) keeps the libraries' notices and loading bars.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show transformers' notices and loading bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub, add_stc_options)
    return parser


VERBOSE_FLAGS = ("-v", "--verbose")


def quiet_libraries() -> None:
    """Hide transformers' notices (e.g. its torchvision fallback) and weight-loading bars; `-v`
    keeps them. Environment variables, so that they hold when transformers is imported later."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported already (a caller of main, a test)
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(flag in argv for flag in VERBOSE_FLAGS)  # global: accepted anywhere on the line
    argv = [a for a in argv if a not in VERBOSE_FLAGS]
    if not verbose:
        quiet_libraries()
    args = build_parser().parse_args(argv)
    if hasattr(args, "command_name"):
        try:
            check_device(args.device)
            args.stc_config = stc_config_from_args(args)
            if hasattr(args, "kv_bits"):  # a command that streams (add_stream_options)
                args.stream = stream_options(args)
        except ValueError as exc:
            print(f"{args.command_name}: error: {exc}", file=sys.stderr)
            return 2
    try:
        return int(args.func(args) or 0)
    except STCError as exc:
        name = getattr(args, "command_name", None) or getattr(args, "error_name", "stc")  # error_name: commands without STC options
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
