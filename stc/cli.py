"""The `stc` command. Every subcommand shares the same STC options (`add_stc_options`)."""

from __future__ import annotations

import argparse
import importlib
import sys

from .config import PRUNER_SCORINGS, STCConfig
from .methods import METHODS, method_config
from .peers import MethodConfig

# subcommand -> module with `register(subparsers, stc_options)`; imported only when needed.
COMMANDS = {
    "run": "stc.integrations.quickrun",
    "eval": "stc.eval.cli",
    "bench": "stc.eval.bench",
    "demo": "stc.integrations.demo_cli",
}


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
    group.add_argument("--keep-ratio", type=float, default=defaults.keep_ratio, metavar="K",
                       help=f"Pruner: share of visual tokens per frame kept for the LLM (default {defaults.keep_ratio})")
    group.add_argument("--alpha", type=float, default=defaults.alpha,
                       help=f"Pruner: weight of the temporal anchor (default {defaults.alpha})")
    group.add_argument("--history-window", type=int, default=None, metavar="W",
                       help="Pruner: frames in the temporal anchor (default: all so far)")
    group.add_argument("--pruner-scoring", choices=PRUNER_SCORINGS, default=defaults.pruner_scoring)
    group.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16", "float64"],
                       help="model dtype (default: float32 on CPU, bfloat16 on CUDA)")


def stc_config_from_args(args: argparse.Namespace) -> STCConfig | MethodConfig | None:
    """The STCConfig (or a peer method's MethodConfig) the shared options ask for; None means no
    compression (dense)."""
    method = "dense" if args.no_stc else args.method
    base = STCConfig(
        cache_interval=args.cache_interval,
        update_ratio=args.update_ratio,
        keep_ratio=args.keep_ratio,
        alpha=args.alpha,
        history_window=args.history_window,
        pruner_scoring=args.pruner_scoring,
    )
    return method_config(method, base)


def resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stc", description="Streaming Token Compression for streaming VideoLLMs (STC-Cacher + STC-Pruner)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub, add_stc_options)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "method"):
            args.stc_config = stc_config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
