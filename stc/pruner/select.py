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
