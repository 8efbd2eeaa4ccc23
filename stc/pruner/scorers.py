"""The Pruner's scorers: pure functions from consecutive frames' tokens [F, n, D] of one stream
and its `PrunerHistory` to scores [F, n] (higher = keep). A scorer reads the history and never
updates it (`stc.pruner.prune_frames` does, after scoring). `SCORERS` is the one table of them."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.pruner.history import PrunerHistory, precise

GAUSSIAN_BANDWIDTHS = (0.125, 0.25, 0.5, 1.0, 2.0)  # σ² of the release's kernel
GAUSSIAN_CHANNEL_SHARE = 0.5


def dual_anchor_scores(tokens: Tensor, history: PrunerHistory, alpha: float) -> Tensor:
    """Novelty scores [F, n] of consecutive frames' tokens [F, n, D] (does not update history).
    The anchors are means of raw tokens, so high-norm tokens pull them toward themselves and score
    as less novel (on the testbed model, object tokens: see the README's CPU testbed section)."""
    z = precise(tokens)
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
    z = precise(tokens)
    dim = z.shape[-1]
    channels = max(1, int(dim * GAUSSIAN_CHANNEL_SHARE))
    low_var = torch.topk(z.var(dim=1, unbiased=False), channels, dim=-1, largest=False).indices  # [F, c]
    z_sel = F.normalize(torch.gather(z, 2, low_var.unsqueeze(1).expand(-1, z.shape[1], -1)), dim=-1)
    memory, _ = history.anchors(z.mean(dim=1), include_current=True)  # [F, D]
    centres = torch.stack([z_sel.mean(dim=1), F.normalize(torch.gather(memory, 1, low_var), dim=-1)], dim=1)  # [F, 2, c]
    return -gaussian_similarity(z_sel.unsqueeze(2), centres.unsqueeze(1)).sum(-1)


@dataclass(frozen=True)
class Scorer:
    """One entry of `SCORERS`: the function, the `STCConfig` fields that change its scores (taken
    as keyword arguments, except history_window, which reaches it through the history), and a
    line saying what it keeps."""

    function: Callable[..., Tensor]
    knobs: tuple[str, ...]
    summary: str

    def __call__(self, tokens: Tensor, history: PrunerHistory, **knobs) -> Tensor:
        """Scores [F, n]; `knobs` may hold more than this scorer reads (the rest is ignored)."""
        return self.function(tokens, history, **{name: knobs[name] for name in self.knobs if name in knobs})


SCORERS: dict[str, Scorer] = {
    "gaussian": Scorer(gaussian_scores, ("history_window",), "the authors' release: least Gaussian-kernel similar to the frame "
                                            "mean and the stream's running mean (the default)"),
    "dual_anchor": Scorer(dual_anchor_scores, ("alpha", "history_window"), "the paper: 1 - cosine to the frame mean and to the "
                                                           "mean of past frame means, weighted by alpha"),
}
