"""STC-Pruner: keep the most novel visual tokens of each frame before the LLM prefill.

Pure tensor code (no transformers import). Spec: ../shared/docs/stc-algorithm.md ("STC-Pruner");
what each scorer does and its knobs: docs/pruner.md.

`stc.pruner.scorers` holds the scorers, one table (`SCORERS`, name -> pure function);
`stc.pruner.history` what a stream remembers; `stc.pruner.select` the per-frame budget and the
top-k; `stc.pruner.budget` the causal adaptive budget (STCConfig.pruner_budget "adaptive").
`keep_positions` (and `prune_frames`, its fixed-budget form) runs one scorer on consecutive frames
of a stream and updates its history.

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

positional (TimeChat-Online's rule), change_novelty (positional change mixed with novelty against
each position's fading memory) and motion (change against the best-matching nearby token of the
previous frame), gaussian_positional (gaussian and positional z-scores mixed) and cacher_change
(the tokens the STC-Cacher recomputed) are candidates for the default, to be decided on testbed v3
(issue 35); coverage (positions not kept for a while gain priority) works on top of any scorer.

Every scorer keeps round(n · keep_ratio) tokens per frame (at least one), in their original order,
or with the adaptive budget a per-frame count whose running mean stays at keep_ratio · n.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stc.pruner.budget import BANK_FRAMES, BudgetState, adaptive_counts, frame_change, select_counts
from stc.pruner.history import NOVELTY_MEMORY_RATE, PrunerHistory, precise
from stc.pruner.scorers import (
    ALPHA,
    CACHER_TIE_WEIGHT,
    GAUSSIAN_BANDWIDTHS,
    GAUSSIAN_CHANNEL_SHARE,
    MIX_WEIGHT,
    MOTION_RADIUS,
    NOVELTY_WEIGHT,
    SCORERS,
    Scorer,
    cacher_change_scores,
    change_novelty_scores,
    dual_anchor_scores,
    gaussian_positional_scores,
    gaussian_scores,
    gaussian_similarity,
    motion_scores,
    positional_scores,
    spatial_scores,
    standardised,
)
from stc.pruner.select import (gather_tokens, keep_count, rank_share, select_counts_with_coverage, select_tokens,
                               select_with_coverage)

PRUNER_SCORINGS = tuple(SCORERS)
PRUNER_BUDGETS = ("fixed", "adaptive")  # STCConfig.pruner_budget: round(n · keep_ratio) per frame, or stc.pruner.budget


def prune_frames(
    tokens: Tensor,
    history: PrunerHistory,
    keep_ratio: float,
    *,
    scoring: str,
    alpha: float = ALPHA,
    coverage: float = 0.0,
    grid: tuple[int, int] | None = None,
    recomputed: Tensor | None = None,
    **knobs,
) -> Tensor:
    """Choose the kept tokens of consecutive frames [F, n, D] of one stream, round(n · keep_ratio)
    per frame, and push the frames into its history. Returns positions [F, k] in original order.

    knobs: the other STCConfig fields a scorer reads (novelty_weight, motion_radius); a scorer
    ignores those it does not read. coverage > 0: positions not kept for a while gain priority
    (`select_with_coverage`). grid: (rows, cols) of a frame's tokens, for the motion scorer.
    recomputed: [F, n] share of each token the Cacher recomputed (NaN rows: reference frames), for
    the cacher_change scorer."""
    return torch.stack(keep_positions(tokens, history, keep_ratio, scoring=scoring, alpha=alpha, coverage=coverage,
                                      grid=grid, recomputed=recomputed, **knobs))


def keep_positions(
    tokens: Tensor,
    history: PrunerHistory,
    keep_ratio: float,
    *,
    scoring: str,
    alpha: float = ALPHA,
    coverage: float = 0.0,
    grid: tuple[int, int] | None = None,
    budget: BudgetState | None = None,
    budget_floor: float = 0.0,
    recomputed: Tensor | None = None,
    **knobs,
) -> list[Tensor]:
    """`prune_frames` with a per-frame count: per frame its kept positions [k_f] in original
    order. budget: the stream's `BudgetState` for the adaptive budget (frame f keeps
    `adaptive_counts` of its `frame_change` tokens, at least budget_floor × keep_ratio · n); None
    keeps round(n · keep_ratio) per frame."""
    if scoring not in SCORERS:
        raise ValueError(f"unknown pruner scoring {scoring!r}")
    scorer = SCORERS[scoring]
    z = precise(tokens)
    n = tokens.shape[1]
    if budget is None:
        counts = None
    else:
        counts = adaptive_counts(frame_change(z, history).tolist(), n, keep_ratio, budget, floor=budget_floor)
    scores = scorer(z, history, grid=grid, recomputed=recomputed, alpha=alpha, **knobs)
    if coverage > 0:
        counts = counts or [keep_count(n, keep_ratio)] * tokens.shape[0]
        index, history.last_kept = select_counts_with_coverage(
            scores, history.kept_at(n, tokens.device), len(history), counts, coverage
        )
    elif counts is None:
        index = list(select_tokens(scores, keep_count(n, keep_ratio)))
    else:
        index = select_counts(scores, counts)
    history.push(z.mean(dim=1))
    previous = "previous" in scorer.remembers or budget is not None  # frame_change reads the previous frame
    history.remember(z, previous=previous, memory="memory" in scorer.remembers)
    return index


__all__ = [
    "ALPHA",
    "BANK_FRAMES",
    "BudgetState",
    "CACHER_TIE_WEIGHT",
    "GAUSSIAN_BANDWIDTHS",
    "GAUSSIAN_CHANNEL_SHARE",
    "MIX_WEIGHT",
    "MOTION_RADIUS",
    "NOVELTY_MEMORY_RATE",
    "NOVELTY_WEIGHT",
    "PRUNER_BUDGETS",
    "PRUNER_SCORINGS",
    "PrunerHistory",
    "adaptive_counts",
    "SCORERS",
    "Scorer",
    "cacher_change_scores",
    "change_novelty_scores",
    "dual_anchor_scores",
    "frame_change",
    "gather_tokens",
    "gaussian_positional_scores",
    "gaussian_scores",
    "gaussian_similarity",
    "keep_count",
    "keep_positions",
    "motion_scores",
    "positional_scores",
    "prune_frames",
    "rank_share",
    "select_counts",
    "select_counts_with_coverage",
    "select_tokens",
    "select_with_coverage",
    "spatial_scores",
    "standardised",
]
