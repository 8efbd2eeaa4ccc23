"""STC-Pruner: keep the most novel visual tokens of each frame before the LLM prefill.

Pure tensor code (no transformers import). Spec: ../shared/docs/stc-algorithm.md ("STC-Pruner").

gaussian (the authors' release; the default, because it keeps more of dense accuracy than the
paper's formula on held-out testbed questions, see docs/testbed.md): on the 50% lowest-variance
channels of the frame, tokens are L2-normalised and compared with a multi-bandwidth Gaussian
kernel to the frame's mean and to the normalised running mean of all frame means so far, the
current frame included; the tokens least similar to both are kept. Deliberate deviations from the
release: channel variance is taken per frame (the release pools a whole chunk of frames, which
looks at future frames), the history holds full-width frame means (the release mixed channel
subsets across chunks), and history is reset per stream (the release never reset it between
videos).

dual_anchor (the paper): S(z) = α·(1 − cos(z, TCA)) + (1 − α)·(1 − cos(z, SCA)), where SCA is
the mean of the frame's tokens and TCA the mean of the SCAs of past frames (all of them, or the
last `history_window`). The first frame of a stream has no history and is scored by SCA alone.

Both keep round(n · keep_ratio) tokens per frame (at least one), in their original order.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

GAUSSIAN_BANDWIDTHS = (0.125, 0.25, 0.5, 1.0, 2.0)  # σ² of the release's kernel
GAUSSIAN_CHANNEL_SHARE = 0.5


def _precise(x: Tensor) -> Tensor:
    """Scores in at least float32 (half-precision cosines are too coarse to rank tokens)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def keep_count(tokens: int, keep_ratio: float) -> int:
    """round(n · keep_ratio), at least 1 and at most n."""
    return min(tokens, max(1, round(tokens * keep_ratio)))


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
        means = _precise(means.detach())
        if self.window is None:
            total = means.sum(0)
            self.total = total if self.total is None else self.total + total
        else:
            seq = means if self.recent is None else torch.cat([self.recent, means])
            self.recent = seq[-self.window :]
        self.count += means.shape[0]


def dual_anchor_scores(tokens: Tensor, history: PrunerHistory, alpha: float) -> Tensor:
    """Novelty scores [F, n] of consecutive frames' tokens [F, n, D] (does not update history).
    The anchors are means of raw tokens, so high-norm tokens pull them toward themselves and score
    as less novel (on the testbed model, object tokens: see the README's CPU testbed section)."""
    z = _precise(tokens)
    sca = z.mean(dim=1)  # [F, D]
    spatial = 1.0 - F.cosine_similarity(z, sca.unsqueeze(1), dim=-1)
    tca, has_history = history.anchors(sca)
    temporal = 1.0 - F.cosine_similarity(z, tca.unsqueeze(1), dim=-1)
    mixed = alpha * temporal + (1.0 - alpha) * spatial
    return torch.where(has_history.unsqueeze(-1), mixed, spatial)


def gaussian_similarity(z: Tensor, centre: Tensor) -> Tensor:
    """Sum over σ² in GAUSSIAN_BANDWIDTHS of exp(−‖z − centre‖² / 2σ²), per token (z and centre
    broadcast; the last axis is the channel axis). One exp over all bandwidths: the scorer runs on
    every chunk of a stream, where each dispatched op counts."""
    distance = (z - centre).pow(2).sum(-1, keepdim=True)
    return torch.exp(distance * _kernel_scales(distance.device, distance.dtype)).sum(-1)


@functools.cache
def _kernel_scales(device: torch.device, dtype: torch.dtype) -> Tensor:
    """−1/2σ² per bandwidth, made once per device and dtype (no host-to-device copy per call); a
    normal tensor even when first asked for under inference mode, so autograd code can use it."""
    with torch.inference_mode(False):
        return torch.tensor([-0.5 / s2 for s2 in GAUSSIAN_BANDWIDTHS], device=device, dtype=dtype)


def gaussian_scores(tokens: Tensor, history: PrunerHistory) -> Tensor:
    """Novelty scores [F, n] (higher = keep) of the release's Gaussian scorer."""
    z = _precise(tokens)
    dim = z.shape[-1]
    channels = max(1, int(dim * GAUSSIAN_CHANNEL_SHARE))
    low_var = torch.topk(z.var(dim=1, unbiased=False), channels, dim=-1, largest=False).indices  # [F, c]
    z_sel = F.normalize(torch.gather(z, 2, low_var.unsqueeze(1).expand(-1, z.shape[1], -1)), dim=-1)
    memory, _ = history.anchors(z.mean(dim=1), include_current=True)  # [F, D]
    centres = torch.stack([z_sel.mean(dim=1), F.normalize(torch.gather(memory, 1, low_var), dim=-1)], dim=1)  # [F, 2, c]
    return -gaussian_similarity(z_sel.unsqueeze(2), centres.unsqueeze(1)).sum(-1)


def select_tokens(scores: Tensor, keep: int) -> Tensor:
    """Positions [F, keep] of the highest scores per frame, in ascending (original) order."""
    return torch.topk(scores, keep, dim=-1, sorted=False).indices.sort(dim=-1).values


def prune_frames(
    tokens: Tensor, history: PrunerHistory, keep_ratio: float, *, scoring: str, alpha: float = 0.5
) -> Tensor:
    """Choose the kept tokens of consecutive frames [F, n, D] of one stream and push the frames
    into its history. Returns positions [F, k] in original order."""
    if scoring == "dual_anchor":
        scores = dual_anchor_scores(tokens, history, alpha)
    elif scoring == "gaussian":
        scores = gaussian_scores(tokens, history)
    else:
        raise ValueError(f"unknown pruner scoring {scoring!r}")
    history.push(_precise(tokens).mean(dim=1))
    return select_tokens(scores, keep_count(tokens.shape[1], keep_ratio))


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """tokens [F, n, D] gathered at positions [F, k] -> [F, k, D]."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


__all__ = [
    "PrunerHistory",
    "dual_anchor_scores",
    "gaussian_scores",
    "gather_tokens",
    "keep_count",
    "prune_frames",
    "select_tokens",
]
