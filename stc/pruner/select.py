"""How many tokens a frame keeps, which ones, and gathering them."""

from __future__ import annotations

import torch
from torch import Tensor


def keep_count(tokens: int, keep_ratio: float) -> int:
    """round(n · keep_ratio), at least 1 and at most n."""
    return min(tokens, max(1, round(tokens * keep_ratio)))


def select_tokens(scores: Tensor, keep: int) -> Tensor:
    """Positions [F, keep] of the highest scores per frame, in ascending (original) order."""
    return torch.topk(scores, keep, dim=-1, sorted=False).indices.sort(dim=-1).values


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """tokens [F, n, D] gathered at positions [F, k] -> [F, k, D]."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def rank_share(scores: Tensor) -> Tensor:
    """Each score's rank within its frame [F, n], scaled to [0, 1] (0: lowest; ties by position),
    so that a priority can be added to scores of any scorer's scale."""
    n = scores.shape[-1]
    ranks = scores.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True)
    return ranks.to(torch.float32) / max(n - 1, 1)


def select_with_coverage(
    scores: Tensor, last_kept: Tensor, first_frame: int, keep: int, coverage: float
) -> tuple[Tensor, Tensor]:
    """Frame by frame (frame f is frame first_frame + f of the stream): priority = `rank_share` of
    its scores + coverage × frames since the position was last kept (last_kept [n], −1: never);
    keep the `keep` highest. Returns positions [F, keep] in original order and the updated last_kept."""
    kept, last_kept = select_counts_with_coverage(scores, last_kept, first_frame, [keep] * scores.shape[0], coverage)
    return torch.stack(kept), last_kept


def select_counts_with_coverage(
    scores: Tensor, last_kept: Tensor, first_frame: int, counts: list[int], coverage: float
) -> tuple[list[Tensor], Tensor]:
    """`select_with_coverage` keeping counts[f] tokens of frame f (the adaptive budget): positions
    [counts[f]] per frame in original order, and the updated last_kept."""
    shares = rank_share(scores)
    last_kept = last_kept.clone()
    kept = []
    for f, count in enumerate(counts):
        frame = first_frame + f
        priority = shares[f] + coverage * (frame - last_kept).to(shares.dtype)
        positions = select_tokens(priority.unsqueeze(0), count)[0]
        last_kept[positions] = frame
        kept.append(positions)
    return kept, last_kept
