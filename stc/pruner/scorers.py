"""The Pruner's scorers: pure functions from consecutive frames' tokens [F, n, D] of one stream
and its `PrunerHistory` to scores [F, n] (higher = keep). A scorer reads the history and never
updates it (`stc.pruner.prune_frames` does, after scoring). `SCORERS` is the one table of them."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.errors import ConfigError
from stc.pruner.history import PrunerHistory, memory_before, precise
from stc.pruner.select import rank_share

GAUSSIAN_BANDWIDTHS = (0.125, 0.25, 0.5, 1.0, 2.0)  # σ² of the release's kernel
GAUSSIAN_CHANNEL_SHARE = 0.5
ALPHA = 0.5  # default STCConfig.alpha
NOVELTY_WEIGHT = 0.5  # default STCConfig.novelty_weight
MOTION_RADIUS = 1  # default STCConfig.motion_radius: a 3x3 neighbourhood
MIX_WEIGHT = 0.5  # default STCConfig.mix_weight: positional's share of the gaussian_positional mix
CACHER_TIE_WEIGHT = 1e-3  # cacher_change: weight of positional change's within-frame rank (it breaks ties)


def dual_anchor_scores(tokens: Tensor, history: PrunerHistory, alpha: float = ALPHA) -> Tensor:
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


def spatial_scores(z: Tensor) -> Tensor:
    """1 − cos(z, frame mean) [F, n] for frames z [F, n, D]: the paper's first-frame rule, used by
    the change scorers on a frame with nothing before it (the stream's first frame, or the first
    after the token count changed): tokens unlike the rest of their frame are kept."""
    return 1.0 - F.cosine_similarity(z, z.mean(dim=1, keepdim=True), dim=-1)


def previous_frames(z: Tensor, history: PrunerHistory) -> Tensor:
    """Each frame's previous frame [F, n, D] for consecutive frames z [F, n, D]: the history's last
    frame before the first one (the first frame itself when there is none: see `first_frame_rule`)."""
    last = history.last_frame(z.shape[1])
    first = z[:1] if last is None else last.unsqueeze(0).to(z)
    return torch.cat([first, z[:-1]])


def first_frame_rule(scores: Tensor, z: Tensor, history: PrunerHistory) -> Tensor:
    """`scores` [F, n] of frames z, the first of them scored by `spatial_scores` instead when the
    history has no previous frame of its size (the stream's first frame, or a new geometry)."""
    if history.last_frame(z.shape[1]) is not None:
        return scores
    return torch.cat([spatial_scores(z[:1]), scores[1:]])


def positional_scores(tokens: Tensor, history: PrunerHistory) -> Tensor:
    """TimeChat-Online's rule as a score [F, n]: 1 − cos(z, the token at the same position of the
    previous frame), so what changed is kept; a frame with no previous one: `spatial_scores`."""
    z = precise(tokens)
    change = 1.0 - F.cosine_similarity(z, previous_frames(z, history), dim=-1)
    return first_frame_rule(change, z, history)


def change_novelty_scores(tokens: Tensor, history: PrunerHistory, novelty_weight: float = NOVELTY_WEIGHT) -> Tensor:
    """(1 − w)·(positional change) + w·(1 − cos(z, m)) [F, n], w = novelty_weight, where m is the
    position's memory of the stream's past frames (each frame enters with share
    NOVELTY_MEMORY_RATE, so an old frame fades): a new object stays novel for a few frames after it
    stops moving, and a static one seen long ago is not kept forever. No previous frame:
    `spatial_scores`."""
    z = precise(tokens)
    memory = memory_before(z, history.position_memory(z.shape[1]))
    change = 1.0 - F.cosine_similarity(z, previous_frames(z, history), dim=-1)
    novelty = 1.0 - F.cosine_similarity(z, memory, dim=-1)
    return first_frame_rule((1.0 - novelty_weight) * change + novelty_weight * novelty, z, history)


def motion_grid(tokens: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    """(rows, cols) of the grid `motion` searches in: `grid`, or a square when none is given."""
    if grid is not None:
        rows, cols = grid
        if rows * cols != tokens:
            raise ConfigError(f"the token grid {rows}x{cols} does not hold the frame's {tokens} tokens")
        return rows, cols
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ConfigError(f"pruner_scoring 'motion' needs the frame's token grid: {tokens} tokens per frame are "
                          "not a square grid, and no grid was given (docs/pruner.md)")
    return side, side


def best_match_similarity(z: Tensor, previous: Tensor, grid: tuple[int, int], radius: int) -> Tensor:
    """Cosine similarity [F, n] of each token of frames z [F, n, D] to its best match among the
    previous frames' tokens [F, n, D] at most `radius` grid steps away (rows and columns)."""
    rows, cols = grid
    frames, _, dim = z.shape
    here = F.normalize(z, dim=-1).view(frames, rows, cols, dim)
    there = F.pad(F.normalize(previous, dim=-1).view(frames, rows, cols, dim), (0, 0, radius, radius, radius, radius))
    inside = F.pad(torch.ones(rows, cols, dtype=torch.bool, device=z.device), (radius, radius, radius, radius))
    best = None
    for dr in range(2 * radius + 1):
        for dc in range(2 * radius + 1):
            similarity = (here * there[:, dr : dr + rows, dc : dc + cols]).sum(-1)
            similarity = similarity.masked_fill(~inside[dr : dr + rows, dc : dc + cols], -math.inf)
            best = similarity if best is None else torch.maximum(best, similarity)
    return best.view(frames, rows * cols)


def motion_scores(
    tokens: Tensor, history: PrunerHistory, motion_radius: int = MOTION_RADIUS, grid: tuple[int, int] | None = None
) -> Tensor:
    """Motion-compensated change [F, n]: 1 − cos(z, its best-matching token of the previous frame
    within motion_radius grid steps), so an object that moved by at most that much is not new
    where it arrives. `grid`: (rows, cols) of the frame's tokens; a square by default. No previous
    frame: `spatial_scores`."""
    z = precise(tokens)
    change = 1.0 - best_match_similarity(z, previous_frames(z, history), motion_grid(z.shape[1], grid), motion_radius)
    return first_frame_rule(change, z, history)


def standardised(scores: Tensor) -> Tensor:
    """Scores [F, n] as z-scores within each frame (mean 0, standard deviation 1; 0 for a frame
    whose scores are all equal), so that scorers of different scales can be added."""
    centred = scores - scores.mean(dim=-1, keepdim=True)
    spread = scores.std(dim=-1, unbiased=False, keepdim=True)
    return torch.where(spread > 0, centred / spread.clamp(min=torch.finfo(scores.dtype).tiny), torch.zeros_like(centred))


def gaussian_positional_scores(tokens: Tensor, history: PrunerHistory, mix_weight: float = MIX_WEIGHT) -> Tensor:
    """(1 − w)·z(gaussian) + w·z(positional) [F, n], w = mix_weight, z = `standardised` within the
    frame: the release's novelty against the frame and the stream's mean (strong on real-time
    questions) mixed with the change since the previous frame (strong on backward and forward
    ones). w = 0 ranks as gaussian, w = 1 as positional."""
    z = precise(tokens)
    gaussian = standardised(gaussian_scores(z, history))
    return (1.0 - mix_weight) * gaussian + mix_weight * standardised(positional_scores(z, history))


def cacher_change_scores(tokens: Tensor, history: PrunerHistory, recomputed: Tensor | None = None) -> Tensor:
    """The STC-Cacher's own change signal [F, n]: the share of the ViT blocks that recomputed each
    token (`recomputed` [F, n]: the adapter's `FrameContext.recomputed`, a token's patches pooled as
    the model pools them), i.e. how much it changed against the Cacher's reference frame, with
    positional change breaking ties (CACHER_TIE_WEIGHT × its within-frame rank). Fallback, the
    positional rule: for every frame when there is no signal (the Cacher is off) and for frames the
    Cacher computed densely (references: NaN rows)."""
    z = precise(tokens)
    positional = positional_scores(z, history)
    if recomputed is None:
        return positional
    share = recomputed.to(device=z.device, dtype=z.dtype)
    signal = share + CACHER_TIE_WEIGHT * rank_share(positional).to(z.dtype)
    return torch.where(torch.isnan(share).all(dim=-1, keepdim=True), positional, torch.nan_to_num(signal, nan=0.0))


@dataclass(frozen=True)
class Scorer:
    """One entry of `SCORERS`: the function, the `STCConfig` fields that change its scores (taken
    as keyword arguments, except history_window, which reaches it through the history), a line
    saying what it keeps, which per-position state of the history it reads (`remembers`: "previous",
    "memory"), whether it takes the frame's token grid, and whether it reads the Cacher's
    per-token recompute share (`FrameContext.recomputed`)."""

    function: Callable[..., Tensor]
    knobs: tuple[str, ...]
    summary: str
    remembers: frozenset[str] = frozenset()
    takes_grid: bool = False
    takes_recomputed: bool = False

    def __call__(self, tokens: Tensor, history: PrunerHistory, grid: tuple[int, int] | None = None,
                 recomputed: Tensor | None = None, **knobs) -> Tensor:
        """Scores [F, n]; `knobs` may hold more than this scorer reads (the rest is ignored)."""
        chosen = {name: knobs[name] for name in self.knobs if name in knobs}
        if self.takes_grid:
            chosen["grid"] = grid
        if self.takes_recomputed:
            chosen["recomputed"] = recomputed
        return self.function(tokens, history, **chosen)


SCORERS: dict[str, Scorer] = {
    "gaussian": Scorer(gaussian_scores, ("history_window",), "the authors' release: least Gaussian-kernel similar to the frame "
                                            "mean and the stream's running mean (the default)"),
    "dual_anchor": Scorer(dual_anchor_scores, ("alpha", "history_window"), "the paper: 1 - cosine to the frame mean and to the "
                                                           "mean of past frame means, weighted by alpha"),
    "positional": Scorer(positional_scores, (), "TimeChat-Online's rule: what changed since the same position "
                                                 "of the previous frame", frozenset({"previous"})),
    "change_novelty": Scorer(change_novelty_scores, ("novelty_weight",),
                             "positional change mixed with novelty against each position's fading memory",
                             frozenset({"previous", "memory"})),
    "motion": Scorer(motion_scores, ("motion_radius",), "change against the best-matching nearby token of the "
                                                        "previous frame", frozenset({"previous"}), takes_grid=True),
    "gaussian_positional": Scorer(gaussian_positional_scores, ("mix_weight", "history_window"),
                                  "gaussian and positional z-scores mixed, mix_weight the positional share",
                                  frozenset({"previous"})),
    "cacher_change": Scorer(cacher_change_scores, (), "the tokens the STC-Cacher recomputed (they changed); "
                                                      "positional without it", frozenset({"previous"}),
                            takes_recomputed=True),
}
