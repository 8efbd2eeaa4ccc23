"""STC-Cacher's change gate: how many tokens a cached frame recomputes, from how many changed.

A token has changed when its first-block key's cosine similarity to the reference key at the same
position is below 1 - `threshold`. The budget of an encoder call's non-reference rows is the share
of changed tokens of the most changed row, kept between a floor and a ceiling share and rounded up
to one of `buckets` sizes, so that the blocks see a small fixed set of shapes (the compiled path
keeps one graph per size, and a GPU could capture each). Every block then recomputes that many
tokens, its least similar ones (or the first block's, with shared selection). Pure Python on
numbers the plan already read from the device (`FramePlan.detect_cuts`): no extra host
synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor


def num_recomputed(tokens: int, update_ratio: float) -> int:
    """k = max(1, floor(r·T)): tokens recomputed per layer on a non-reference frame."""
    return min(tokens, max(1, math.floor(update_ratio * tokens + 1e-9)))


@dataclass(frozen=True)
class RecomputeGate:
    """threshold: a token changed when 1 - cos(K, K_ref) > threshold; floor, ceiling: shares of
    the tokens recomputed at least and at most; buckets: number of budget sizes, evenly spaced
    from floor to ceiling (1: always the ceiling)."""

    threshold: float
    floor: float
    ceiling: float
    buckets: int

    def changed(self, cosines: Tensor) -> Tensor:
        """Boolean mask of the changed tokens, given their key cosines to the reference."""
        return cosines < 1.0 - self.threshold

    def sizes(self, tokens: int) -> list[int]:
        """The budget sizes (tokens, ascending, distinct) for frames of `tokens` tokens."""
        if self.buckets == 1:
            return [num_recomputed(tokens, self.ceiling)]
        step = (self.ceiling - self.floor) / (self.buckets - 1)
        return sorted({num_recomputed(tokens, self.floor + i * step) for i in range(self.buckets)})

    def budget(self, changed_share: float, tokens: int) -> int:
        """The smallest size that covers `changed_share` of `tokens`, the ceiling's if none does."""
        sizes = self.sizes(tokens)
        need = math.ceil(changed_share * tokens - 1e-9)
        return next((size for size in sizes if size >= need), sizes[-1])
