"""What one stream's Pruner remembers between encoder calls (reset when a new stream starts)."""

from __future__ import annotations

import torch
from torch import Tensor


def precise(x: Tensor) -> Tensor:
    """At least float32 (half-precision cosines are too coarse to rank tokens)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


NOVELTY_MEMORY_RATE = 0.2  # share of each new frame in the per-position memory (a time constant of 5 frames)


class PrunerHistory:
    """One stream's past for the scorers: the frame means (a running sum, or the last `window` of
    them) and, only for the scorers that read them, per-position state: the last frame's tokens,
    a decaying per-position mean of the past frames, and when each position was last kept.
    Per-position state is dropped when the token count per frame changes (a new geometry)."""

    def __init__(self, window: int | None = None):
        self.window = window
        self.clear()

    def clear(self) -> None:
        self.total: Tensor | None = None
        self.count = 0
        self.recent: Tensor | None = None  # [<=window, D] when windowed
        self.previous: Tensor | None = None  # [n, D] the last frame's tokens (float32)
        self.memory: Tensor | None = None  # [n, D] m ← (1 − λ)·m + λ·z per frame, λ = NOVELTY_MEMORY_RATE
        self.last_kept: Tensor | None = None  # [n] long: stream frame index each position was last kept at, −1 never

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

    def last_frame(self, tokens: int) -> Tensor | None:
        """The last frame's tokens [n, D] when it had `tokens` tokens, else None."""
        return _if_tokens(self.previous, tokens)

    def position_memory(self, tokens: int) -> Tensor | None:
        """The per-position memory [n, D] when its frames had `tokens` tokens, else None."""
        return _if_tokens(self.memory, tokens)

    def kept_at(self, tokens: int, device: torch.device) -> Tensor:
        """Frame index each of `tokens` positions was last kept at [n] (−1: never, or a new geometry)."""
        last = _if_tokens(self.last_kept, tokens)
        return torch.full((tokens,), -1, dtype=torch.long, device=device) if last is None else last

    def remember(self, z: Tensor, *, previous: bool, memory: bool) -> None:
        """After frames z [F, n, D] (float32) were scored: keep the last one and fold them all into
        the per-position memory, for the scorers that read these (`Scorer.remembers`)."""
        z = z.detach()
        if previous:
            self.previous = z[-1].clone()
        if memory:
            self.memory = torch.lerp(memory_before(z, self.position_memory(z.shape[1]))[-1], z[-1], NOVELTY_MEMORY_RATE)


def memory_before(z: Tensor, memory: Tensor | None) -> Tensor:
    """The per-position memory [F, n, D] before each of the frames z [F, n, D]; entry 0 is
    `memory` (the first frame itself when there is none yet)."""
    current = z[0] if memory is None else memory.to(z)
    if z.shape[0] == 1:
        return current.unsqueeze(0)
    out = [current]
    for frame in z[:-1]:
        current = torch.lerp(current, frame, NOVELTY_MEMORY_RATE)
        out.append(current)
    return torch.stack(out)


def _if_tokens(state: Tensor | None, tokens: int) -> Tensor | None:
    return state if state is not None and state.shape[0] == tokens else None
