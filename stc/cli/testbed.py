"""`stc testbed train`: train the CPU testbed model (stc.eval.testbed.train), resumable.

Every field of the recipe's `TrainConfig` and `TestbedArchitecture` is a flag; a flag not given
takes the recipe's value (`--recipe`, stc.eval.testbed.recipes)."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path

from stc.errors import InputError


def _flag(value: str) -> bool:
    if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() in ("1", "true", "yes")


def _names(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _shown(value) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


def _add_fields(group, dataclass_type, recipes: dict, choices: dict | None = None) -> None:
    """One flag per dataclass field, default suppressed (the recipe's value then applies);
    `choices`: the allowed values of some fields. A tuple field takes a comma-separated list."""
    for field in fields(dataclass_type):
        defaults = {name: getattr(values, field.name) for name, values in recipes.items()}
        sample = next(iter(defaults.values()))
        kind = _flag if isinstance(sample, bool) else _names if isinstance(sample, tuple) else type(sample)
        shown = ", ".join(f"{name} {_shown(value)}" for name, value in defaults.items())
        group.add_argument(f"--{field.name.replace('_', '-')}", type=kind, choices=(choices or {}).get(field.name),
                           default=argparse.SUPPRESS, help=f"(default: {shown})")


def register(subparsers, add_stc_options) -> None:
    from stc.eval.testbed import TESTBED_DIR
    from stc.eval.testbed.model import TestbedArchitecture
    from stc.eval.testbed.recipes import DEFAULT_RECIPE, RECIPES
    from stc.eval.testbed.train import SCHEDULES, TrainConfig

    parser = subparsers.add_parser("testbed", help="train the CPU testbed model",
                                   description="The CPU testbed model: a tiny LLaVA-OneVision trained on the synthetic benchmark.")
    sub = parser.add_subparsers(dest="testbed_command", metavar="COMMAND")
    sub.required = True
    train = sub.add_parser("train", help="train (or, with --resume, continue) the testbed model",
                           description="Seeded, fixed step counts, CPU (or --device cuda); writes a checkpoint when paused (docs/testbed.md).")
    train.add_argument("--out", default=str(TESTBED_DIR), help=f"output folder (default {TESTBED_DIR})")
    train.add_argument("--recipe", choices=tuple(RECIPES), default=argparse.SUPPRESS,
                       help=f"the defaults of every training and architecture flag (default {DEFAULT_RECIPE})")
    _add_fields(train.add_argument_group("training"), TrainConfig, {k: c for k, (c, _) in RECIPES.items()},
                {"generator": (2, 3), "schedule": SCHEDULES})
    geometry = train.add_argument_group("architecture")
    geometry.add_argument("--grid", type=int, default=argparse.SUPPRESS, metavar="G",
                          help="G x G visual tokens per frame for the LLM (sets --patch-size to image size / 2G; "
                               "default: " + ", ".join(f"{k} {a.grid}" for k, (_, a) in RECIPES.items()) + ")")
    _add_fields(geometry, TestbedArchitecture, {k: a for k, (_, a) in RECIPES.items()})
    train.add_argument("--resume", action="store_true",
                       help="continue the run whose checkpoint is in --out, with that run's config and architecture "
                            "(no recipe, training or architecture flag with it)")
    train.add_argument("--device", default="cpu", metavar="D",
                       help="where the steps run: cpu (default), cuda or cuda:N; also with --resume (a run paused on one "
                            "device continues on another)")
    train.add_argument("--stop-after-minutes", type=float, default=None, metavar="M",
                       help="end this process with a checkpoint after M minutes (resume later with --resume)")
    train.set_defaults(func=main, error_name="stc testbed train")


def _setting_names() -> set[str]:
    """The flags a recipe gives defaults to (as attribute names), and --recipe and --grid."""
    from stc.eval.testbed.model import TestbedArchitecture
    from stc.eval.testbed.train import TrainConfig

    return {f.name for f in (*fields(TrainConfig), *fields(TestbedArchitecture))} | {"recipe", "grid"}


def recipe_from_args(args: argparse.Namespace):
    """(TrainConfig, TestbedArchitecture): the recipe's, with every field given as a flag replaced."""
    from stc.eval.testbed.recipes import DEFAULT_RECIPE, RECIPES

    config, arch = RECIPES[getattr(args, "recipe", DEFAULT_RECIPE)]
    given = vars(args)
    config = replace(config, **{f.name: given[f.name] for f in fields(config) if f.name in given})
    arch_fields = {f.name: given[f.name] for f in fields(arch) if f.name in given}
    if "grid" in given:
        if "patch_size" in arch_fields:
            raise ValueError("--grid sets the patch size: give --grid or --patch-size, not both")
        arch = type(arch).with_grid(given["grid"], **{**vars(arch), **arch_fields})
    else:
        arch = replace(arch, **arch_fields)
    return config, arch


def main(args: argparse.Namespace) -> int:
    from stc.eval.testbed.train import train

    try:
        if args.resume:
            settings = [name for name in vars(args) if name in _setting_names()]
            if settings:
                raise ValueError(f"--resume continues with the run's own settings; drop "
                                 f"{', '.join('--' + name.replace('_', '-') for name in sorted(settings))}")
        config, arch = recipe_from_args(args)
        train(Path(args.out), config, arch, resume=args.resume, stop_after_minutes=args.stop_after_minutes,
              device=args.device)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return 0
