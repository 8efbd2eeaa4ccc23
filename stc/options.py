"""Option parsing shared by the `stc` CLI and the command modules it registers (stc run, demo,
eval, bench). It lives below them all, so that no command module imports the CLI."""

from __future__ import annotations

import argparse
import re


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


def resolve_dtype(name: str, device: str):
    """The torch dtype `--dtype` names; "auto" is bfloat16 on CUDA, float32 elsewhere."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)
