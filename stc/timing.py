"""Per-stage wall-clock accounting (synchronising CUDA so GPU work is charged to its stage)."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


def synchronize(device) -> None:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


class StageTimer:
    """Accumulates seconds per stage while `enabled`; nested sections are charged to both."""

    def __init__(self):
        self.enabled = False
        self.device = torch.device("cpu")
        self.seconds: dict[str, float] = defaultdict(float)
        self._starts: dict[str, float] = {}

    def reset(self) -> None:
        self.seconds = defaultdict(float)
        self._starts = {}

    def start(self, stage: str) -> None:
        if self.enabled:
            synchronize(self.device)
            self._starts[stage] = time.perf_counter()

    def stop(self, stage: str) -> None:
        if self.enabled and stage in self._starts:
            synchronize(self.device)
            self.seconds[stage] += time.perf_counter() - self._starts.pop(stage)

    @contextmanager
    def section(self, stage: str):
        self.start(stage)
        try:
            yield
        finally:
            self.stop(stage)

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)
