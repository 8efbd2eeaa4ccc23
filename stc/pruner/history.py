"""What one stream's Pruner remembers between encoder calls (reset when a new stream starts)."""

from __future__ import annotations

import torch
from torch import Tensor


def precise(x: Tensor) -> Tensor:
    """At least float32 (half-precision cosines are too coarse to rank tokens)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class PrunerHistory:
    """Frame means of one stream's past frames: a running sum, or the last `window` of them."""

    def __init__(self, window: int | None = None):
        self.window = window
        self.clear()

    def clear(self) -> None:
        self.total: Tensor | None = None
        self.count = 0
        self.recent: Tensor | None = None  # [<=window, D] when windowed

    def __len__(self) -> int:
        return self.count

    def anchors(self, means: Tensor, include_current: bool = False) -> tuple[Tensor, Tensor]:
        """Temporal anchors for consecutive frames with means [F, D] (float32).

        Anchor j = mean of the history plus frames before j (and j itself when
        `include_current`), limited to the last `window` frames. Returns anchors [F, D] and a
        bool [F] telling which frames have any history at all.
        """
        frames = means.shape[0]
        shift = 1 if include_current else 0
        if self.window is None:
            prefix = torch.cat([means.new_zeros(1, means.shape[1]), means.cumsum(0)])  # [F+1, D]
            sums = prefix[shift : frames + shift]
            counts = torch.arange(shift, frames + shift, dtype=means.dtype, device=means.device)
            if self.total is not None:
                sums = sums + self.total.to(means)
                counts = counts + self.count
        else:
            past = self.recent if self.recent is not None else means.new_zeros(0, means.shape[1])
            past = past.to(means)
            seq = torch.cat([past, means])
            prefix = torch.cat([seq.new_zeros(1, seq.shape[1]), seq.cumsum(0)])
            end = torch.arange(frames, device=means.device) + len(past) + shift
            start = (end - self.window).clamp(min=0)
            sums = prefix[end] - prefix[start]
            counts = (end - start).to(means.dtype)
        has = counts > 0
        return sums / counts.clamp(min=1).unsqueeze(-1), has

    def push(self, means: Tensor) -> None:
        means = precise(means.detach())
        if self.window is None:
            total = means.sum(0)
            self.total = total if self.total is None else self.total + total
        else:
            seq = means if self.recent is None else torch.cat([self.recent, means])
            self.recent = seq[-self.window :]
        self.count += means.shape[0]
