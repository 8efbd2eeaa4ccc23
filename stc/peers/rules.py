"""Per-frame rules several peer methods share: even spreads, lowest / highest scores, gathers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def uniform_positions(tokens: int, keep: int, device=None) -> Tensor:
    """`keep` positions spread evenly over 0..tokens-1: floor((i + 1/2) * tokens / keep)."""
    return (torch.arange(keep, device=device) * 2 + 1) * tokens // (2 * keep)


def lowest(scores: Tensor, keep: int) -> Tensor:
    """Positions of the `keep` lowest scores, ascending."""
    return torch.topk(scores, keep, largest=False, sorted=False).indices.sort().values


def highest(scores: Tensor, keep: int) -> Tensor:
    """Positions of the `keep` highest scores, ascending."""
    return torch.topk(scores, keep, sorted=False).indices.sort().values


def gathered(tokens: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    return positions, tokens[positions]


def same_position_similarity(tokens: Tensor, reference: Tensor) -> Tensor:
    """Cosine similarity [n] of each token [n, D] to the token at the same position of a
    reference frame [n, D] (float32)."""
    return F.cosine_similarity(tokens.float(), reference.float(), dim=-1)


def kept_or_best(keep: Tensor, scores: Tensor) -> Tensor:
    """Positions where `keep` [n] holds, or the highest score's when none does (a frame keeps >= 1)."""
    positions = keep.nonzero().flatten()
    return positions if len(positions) else scores.argmax().view(1)
