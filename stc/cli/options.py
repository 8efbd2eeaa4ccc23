"""Option parsing shared by the `stc` CLI and the command modules it registers (stc run, demo,
eval, bench). It lives below them all, so that no command module imports the CLI."""

from __future__ import annotations

import argparse
import re
from contextlib import contextmanager

from stc.errors import ConfigError, InputError, STCError


@contextmanager
def user_errors():
    """Inside, a ValueError (a bad setting) becomes a ConfigError and an OSError (a file) an
    InputError, so that `stc.cli.main` reports it as it reports every STCError: one line,
    `PROG: error: MESSAGE`, exit code 2 (an STCError passes unchanged)."""
    try:
        yield
    except STCError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise InputError(str(exc)) from None


def positive(kind):
    """An argparse type: a number of `kind` > 0 (an int >= 1)."""

    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be {'>= 1' if kind is int else '> 0'}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value: 'x'"
    return parse


def check_device(device: str) -> None:
    """ValueError unless `device` is cpu, or cuda / cuda:N with that GPU present."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    count = torch.cuda.device_count()
    if int(device.partition(":")[2] or 0) >= count:
        raise ValueError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")


def _number_or_off(text: str, upper: float) -> float | None:
    """A number in (0, upper), or None for "off"/"none"."""
    if text.lower() in ("off", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 < value < upper:
        raise argparse.ArgumentTypeError(f"must be a number in (0, {upper:g}) or 'off', got {text!r}")
    return value


def cut_threshold(text: str) -> float | None:
    """An argparse type: a similarity in (0, 1), or "off" (None: periodic references only)."""
    return _number_or_off(text, 1.0)


def change_threshold(text: str) -> float | None:
    """An argparse type: a key change 1 - cosine in (0, 2), or "off" (None: no change gate)."""
    return _number_or_off(text, 2.0)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def byte_size(text: str) -> int:
    """An argparse type: a size in bytes, as a number with an optional unit (512MB, 1.5GiB, 2e9)."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    try:
        value = float(match.group(1)) * _UNITS[unit] if match and unit in _UNITS else None
    except ValueError:
        value = None
    if value is None or not value >= 1:
        raise argparse.ArgumentTypeError(f"expected a size in bytes such as 800000, 512MB or 1.5GiB, got {text!r}")
    return int(value)


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    """The streaming engine's options, with one spelling in every command that streams."""
    from stc.config import EVICTIONS, KV_BITS, KV_SCHEMES
    from stc.integrations.engine.options import DEFAULTS

    group = parser.add_argument_group("streaming engine options")
    group.add_argument("--n-local", type=positive(int), default=DEFAULTS.n_local, metavar="TOKENS",
                       help="sliding attention window while ingesting (default %(default)s)")
    group.add_argument("--topk", type=positive(int), default=DEFAULTS.topk, metavar="K",
                       help="frame blocks retrieved per question, per layer (default %(default)s)")
    group.add_argument("--kv-bits", type=int, choices=KV_BITS, default=DEFAULTS.kv_bits,
                       help="bits of a frame block once it leaves the window (default %(default)s: as computed)")
    group.add_argument("--kv-scheme", choices=KV_SCHEMES, default=DEFAULTS.kv_scheme,
                       help="quantization for --kv-bits below 16 (default %(default)s)")
    group.add_argument("--sink-frames", type=int, default=DEFAULTS.sink_frames, metavar="N",
                       help="first frames kept visible to all later ingestion, never evicted (default %(default)s)")
    group.add_argument("--memory-budget", type=byte_size, default=None, metavar="BYTES",
                       help="cap on the stream's KV (e.g. 2GiB): old blocks drop to 2 bits, then the least "
                            "novel are evicted (default: none)")
    group.add_argument("--eviction", choices=EVICTIONS, default=DEFAULTS.eviction,
                       help="with --memory-budget: evict the least novel block first (default) or the oldest")


def stream_options(args: argparse.Namespace) -> dict:
    """StreamingSession keyword arguments from `add_stream_options`' flags; ValueError for
    contradictory ones."""
    from stc.integrations.engine.options import DEFAULTS, MEMORY_OPTIONS

    if args.sink_frames < 0:
        raise ValueError(f"--sink-frames must be >= 0, got {args.sink_frames}")
    if args.kv_scheme != DEFAULTS.kv_scheme and args.kv_bits == 16:
        raise ValueError(f"--kv-scheme {args.kv_scheme} has no effect with --kv-bits 16 (blocks are not quantized)")
    if args.eviction != DEFAULTS.eviction and args.memory_budget is None:
        raise ValueError(f"--eviction {args.eviction} has no effect without --memory-budget")
    return {name: getattr(args, name) for name in ("n_local", "topk", *MEMORY_OPTIONS)}
