"""`stc testbed train`: train the CPU testbed model (stc.eval.testbed.train), resumable."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from stc.errors import InputError


def _flag(value: str) -> bool:
    if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() in ("1", "true", "yes")


def register(subparsers, add_stc_options) -> None:
    from stc.eval.testbed import TESTBED_DIR
    from stc.eval.testbed.train import TrainConfig

    parser = subparsers.add_parser("testbed", help="train the CPU testbed model",
                                   description="The CPU testbed model: a tiny LLaVA-OneVision trained on the synthetic benchmark.")
    sub = parser.add_subparsers(dest="testbed_command", metavar="COMMAND")
    sub.required = True
    train = sub.add_parser("train", help="train (or, with --resume, continue) the testbed model",
                           description="Seeded, fixed step counts, CPU; writes a checkpoint when paused (docs/testbed.md).")
    train.add_argument("--out", default=str(TESTBED_DIR), help=f"output folder (default {TESTBED_DIR})")
    for name, default in asdict(TrainConfig()).items():
        kind = _flag if isinstance(default, bool) else type(default)
        train.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=f"(default {default})")
    train.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    train.add_argument("--stop-after-minutes", type=float, default=None, metavar="M",
                       help="end this process with a checkpoint after M minutes (resume later with --resume)")
    train.set_defaults(func=main, error_name="stc testbed train")


def main(args: argparse.Namespace) -> int:
    from stc.eval.testbed.train import TrainConfig, train

    try:
        config = TrainConfig(**{k: getattr(args, k) for k in asdict(TrainConfig())})
        train(Path(args.out), config, resume=args.resume, stop_after_minutes=args.stop_after_minutes)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return 0
