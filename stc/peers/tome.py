"""ToMe: bipartite soft matching and size-weighted merging, `TokenMerging` inside a vision
encoder and `ToMeSelector`, which merges each frame down to the LLM budget."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.peers.base import FrameSelector, Option
from stc.validation import is_int


def bipartite_soft_matching(metric: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """ToMe's matching on metric [B, T, C]: every token at an even position (set A) picks its most
    similar (cosine) token at an odd position (set B); the r A-tokens with the most similar picks
    merge into them (r is capped at T // 2). Returns the assignment [B, T] (each token's index
    after merging; survivors keep their order) and the survivors [B, T] (bool)."""
    batch, count, _ = metric.shape
    r = min(r, count // 2)
    m = F.normalize(metric.float(), dim=-1)
    best, partner = (m[:, 0::2] @ m[:, 1::2].transpose(1, 2)).max(dim=-1)  # [B, |A|]
    merged = best.argsort(dim=-1, descending=True)[:, :r]
    survivors = torch.ones(batch, count, dtype=torch.bool, device=metric.device)
    survivors[:, 0::2] = survivors[:, 0::2].scatter(1, merged, False)
    rank = survivors.long().cumsum(dim=1) - 1
    assignment = rank.clone()
    assignment[:, 0::2] = torch.where(survivors[:, 0::2], rank[:, 0::2], rank.gather(1, 2 * partner + 1))
    return assignment, survivors


def merge_weighted(x: Tensor, size: Tensor, assignment: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Size-weighted means of the tokens x [B, T, C] (sizes [B, T, 1], float32) that share an
    assignment [B, T] -> tokens [B, count, C] and their sizes [B, count, 1]."""
    index = assignment.unsqueeze(-1)
    totals = x.new_zeros(x.shape[0], count, x.shape[-1], dtype=torch.float32)
    totals.scatter_add_(1, index.expand(-1, -1, x.shape[-1]), x.float() * size)
    sizes = size.new_zeros(x.shape[0], count, 1).scatter_add_(1, index, size)
    return (totals / sizes).to(x.dtype), sizes


def merge_to_budget(tokens: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """Bipartite soft matching on one frame's tokens [n, D] (the tokens are the metric), in rounds
    of at most half the tokens, until `keep` remain. Returns the survivors' original positions
    (ascending) and the size-weighted merged tokens."""
    x = tokens[None]
    size = torch.ones(1, len(tokens), 1, device=tokens.device)
    positions = torch.arange(len(tokens), device=tokens.device)
    while x.shape[1] > keep:
        assignment, survivors = bipartite_soft_matching(x, x.shape[1] - keep)
        x, size = merge_weighted(x, size, assignment, int(survivors.sum()))
        positions = positions[survivors[0]]
    return positions, x[0]


class TokenMerging:
    """ToMe inside a vision encoder, for one encoder call (rows = frames).

    After each layer's attention, `merge` merges r tokens by bipartite soft matching on the keys
    (mean over heads), as size-weighted means; `attention_bias` is ToMe's proportional attention
    (log size added to every query's logits for that key); after the last layer, `unmerge` copies
    each merged token back to every position it absorbed, so that the projector and LLaVA's 2D
    pooling see the full grid (as tomesd does). r: tokens merged per layer (None: T // (2 * layers),
    at least 1: about half the tokens merged by the last layer), at most half the current tokens.
    """

    def __init__(self, r: int | None, layers: int, tokens: int):
        self.r = max(1, tokens // (2 * layers)) if r is None else r
        self.size: Tensor | None = None  # [B, T_l, 1] float32: original tokens per current token
        self.source: Tensor | None = None  # [B, T]: current index of every original token
        self.layer_tokens: list[int] = []  # tokens per row entering each layer

    def attention_bias(self, x: Tensor) -> Tensor:
        """[B, 1, 1, T_l] additive attention bias for tokens x [B, T_l, C] (zeros before merging)."""
        if self.size is None:
            self.size = torch.ones(x.shape[0], x.shape[1], 1, device=x.device)
            self.source = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        self.layer_tokens.append(x.shape[1])
        return self.size.log().view(x.shape[0], 1, 1, -1).to(x.dtype)

    def merge(self, x: Tensor, metric: Tensor) -> Tensor:
        """Merge r tokens of x [B, T_l, C] using metric [B, T_l, c] (the layer's keys)."""
        if self.r == 0 or x.shape[1] < 2:
            return x
        assignment, survivors = bipartite_soft_matching(metric, self.r)
        x, self.size = merge_weighted(x, self.size, assignment, int(survivors[0].sum()))
        self.source = assignment.gather(1, self.source)
        return x

    def unmerge(self, x: Tensor) -> Tensor:
        """Tokens [B, T_l, C] -> [B, T, C]: every original position gets its merged token."""
        return x.gather(1, self.source.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

    @property
    def mean_tokens(self) -> float:
        """Tokens per row the encoder layers processed, averaged over layers."""
        return sum(self.layer_tokens) / len(self.layer_tokens) if self.layer_tokens else 0.0


class ToMeSelector(FrameSelector):
    """ToMe (token merging), second stage.

    Source: Bolya et al., "Token Merging: Your ViT But Faster" (ICLR 2023);
    github.com/facebookresearch/ToMe (tome/merge.py, tome/patch/timm.py).
    Rule: bipartite soft matching: split the tokens alternately into sets A and B, join every A
    token to its most similar B token, merge the r most similar pairs as size-weighted means.
    The first stage, `TokenMerging`, runs inside SigLIP (keys as the metric, proportional
    attention, r per layer) and un-merges before the projector; this selector then merges each
    frame's pooled tokens down to the budget k with the same rule (tokens as the metric), so that
    ToMe competes at the same LLM budget; a merged token sits at its surviving token's position.
    Knob: r, tokens merged per ViT layer (None, the default: max(1, T // (2 * layers)); 0: none).
    Adaptations: un-merging before the projector (LLaVA-OneVision pools a 2D grid after it); the
    budget stage. LLaVA-OneVision only: Qwen-VL's windowed ViT would need merging inside each
    attention window and a merger that pools fixed 2x2 groups.
    """

    description = "ToMe: bipartite token merging inside SigLIP, then down to the budget after pooling"
    options = {"r": Option(None, lambda v: v is None or (is_int(v) and v >= 0), "None or an integer >= 0")}
    vit_side = True

    def select_frame(self, tokens, context, t):
        return merge_to_budget(tokens, self.budget(len(tokens)))
