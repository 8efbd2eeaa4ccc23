"""`STCConfig`: every knob of STC-Cacher and STC-Pruner, validated when built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from stc.pruner import ALPHA, MIX_WEIGHT, MOTION_RADIUS, NOVELTY_WEIGHT, PRUNER_BUDGETS, PRUNER_SCORINGS, SCORERS
from stc.validation import is_int, is_number

KV_BITS = (16, 8, 4, 2)  # bits of a stored frame block (16: kept as computed); see stc.kv_quant
KV_SCHEMES = ("kivi", "qvg")
EVICTIONS = ("novelty", "oldest")  # which block a memory budget evicts first
CUT_THRESHOLD = 0.83  # default STCConfig.cut_threshold (docs/scene-cuts.md)


@dataclass(frozen=True)
class STCConfig:
    """Settings of STC for one patched model.

    cacher:          run STC-Cacher inside the vision encoder.
    cache_interval:  N; frame t of a stream is a reference frame (dense ViT, cache refreshed)
                     when t mod N == 0. 1 makes every frame a reference (exact, no reuse).
    update_ratio:    r; share of tokens recomputed per layer on non-reference frames, in (0, 1].
    cut_threshold:   a frame whose first-block keys have a mean cosine similarity to its
                     reference's below this becomes a reference at once (a scene cut) and the
                     schedule restarts from it; None: periodic references only.
    pruner:          run STC-Pruner between the projector and the LLM.
    keep_ratio:      share of visual tokens per frame the LLM prefills, in (0, 1].
    alpha:           weight of the temporal anchor in the dual-anchor score, in [0, 1] (the
                     gaussian scorer has no weight).
    history_window:  number of past frames in the temporal anchor; None = all frames so far.
    pruner_scoring:  "gaussian" (the authors' release; the default since it keeps more of dense
                     accuracy on held-out testbed questions, docs/testbed.md), "dual_anchor"
                     (the paper's formula), or a candidate measured on testbed v3 (docs/pruner.md):
                     "positional" (change since the same position of the previous frame),
                     "change_novelty" (that change mixed with novelty against each position's
                     fading memory), "motion" (change against the best-matching nearby token of
                     the previous frame), "gaussian_positional" (gaussian and positional
                     z-scores mixed), "cacher_change" (the tokens the STC-Cacher recomputed;
                     positional where it has no signal: Cacher off, reference frames).
    novelty_weight:  change_novelty only: weight of the memory novelty against the positional
                     change, in [0, 1] (0: positional, 1: memory novelty alone).
    motion_radius:   motion only: how many grid steps (rows and columns) a token's match in the
                     previous frame may lie away, an integer >= 1 (1: a 3x3 neighbourhood).
    mix_weight:      gaussian_positional only: positional change's share of the mix, in [0, 1]
                     (0 ranks as gaussian, 1 as positional).
    coverage:        any scorer: priority a position gains per frame it was not kept, in units
                     of the frame's score range (ranks scaled to [0, 1]), >= 0; 0 (default): off.
    pruner_budget:   "fixed" (default): every frame keeps k = round(n * keep_ratio) tokens;
                     "adaptive": a frame keeps more the more it changed since the previous frame
                     (mean positional change against the stream's mean so far), repeated frames
                     fewer, from a token bucket filled with k a frame: never more tokens than the
                     fixed budget, the running mean within one token below k
                     (`stc.pruner.budget`); works with every scorer.
    budget_floor:    adaptive budget only: each frame keeps at least this share of
                     round(n * keep_ratio) tokens, in [0, 1] (0, the default: no floor beyond
                     one token; 1 is the fixed budget).
    compile:         run the Cacher's reference and selective blocks through
                     `torch.compile(fullgraph=True)` (compiled once per geometry, shared by all
                     layers); the eager path is the default.

    The adaptive Cacher (docs/adaptive-cacher.md; every knob off by default, and then the Cacher
    is exactly the fixed one):
    drift_threshold:   a frame whose first-block keys have a mean cosine similarity to its
                       reference's below this becomes a reference (drift), and cache_interval
                       becomes the most frames one reference serves (N_max); None: periodic.
    change_threshold:  change gate: a token has changed when 1 - cos(K, K_ref) of its first-block
                       key exceeds this; every block of a call then recomputes as many tokens as
                       the most changed frame has changed, between min_update_ratio and
                       update_ratio (the ceiling), rounded up to one of recompute_buckets sizes;
                       None: always update_ratio.
    min_update_ratio:  the gate's floor share, in [0, update_ratio] (at least one token).
    recompute_buckets: number of budget sizes the gate rounds to (>= 1; each is one compiled graph).
    share_selection:   blocks after the first reuse its recomputed positions and the reference's
                       keys of the other tokens (no K projection of every token).
    refresh_tokens:    a recomputed token overwrites its entry of the stream's reference (applied
                       after each encoder call, from the stream's last frame in it).
    """

    cacher: bool = True
    cache_interval: int = 2
    update_ratio: float = 0.25
    cut_threshold: float | None = CUT_THRESHOLD
    pruner: bool = True
    keep_ratio: float = 0.3
    alpha: float = ALPHA
    history_window: int | None = None
    pruner_scoring: str = "gaussian"
    novelty_weight: float = NOVELTY_WEIGHT
    motion_radius: int = MOTION_RADIUS
    mix_weight: float = MIX_WEIGHT
    coverage: float = 0.0
    pruner_budget: str = "fixed"
    budget_floor: float = 0.0
    compile: bool = False
    drift_threshold: float | None = None
    change_threshold: float | None = None
    min_update_ratio: float = 0.05
    recompute_buckets: int = 4
    share_selection: bool = False
    refresh_tokens: bool = False

    def __post_init__(self) -> None:
        for name in ("cacher", "pruner", "compile", "share_selection", "refresh_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"STCConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if not is_int(self.cache_interval) or self.cache_interval < 1:
            raise ValueError(f"STCConfig.cache_interval must be an integer >= 1, got {self.cache_interval!r}")
        if not is_number(self.update_ratio) or not 0.0 < self.update_ratio <= 1.0:
            raise ValueError(f"STCConfig.update_ratio must be in (0, 1], got {self.update_ratio!r}")
        if self.cut_threshold is not None and (not is_number(self.cut_threshold) or not 0.0 < self.cut_threshold < 1.0):
            raise ValueError(f"STCConfig.cut_threshold must be None or in (0, 1), got {self.cut_threshold!r}")
        if self.drift_threshold is not None and (not is_number(self.drift_threshold) or not 0.0 < self.drift_threshold < 1.0):
            raise ValueError(f"STCConfig.drift_threshold must be None or in (0, 1), got {self.drift_threshold!r}")
        if self.change_threshold is not None and (not is_number(self.change_threshold) or not 0.0 < self.change_threshold < 2.0):
            raise ValueError(f"STCConfig.change_threshold must be None or in (0, 2), got {self.change_threshold!r}")
        if not is_number(self.min_update_ratio) or not 0.0 <= self.min_update_ratio <= 1.0:
            raise ValueError(f"STCConfig.min_update_ratio must be in [0, 1], got {self.min_update_ratio!r}")
        if self.change_threshold is not None and self.min_update_ratio > self.update_ratio:
            raise ValueError(f"STCConfig.min_update_ratio ({self.min_update_ratio}) must not exceed update_ratio "
                             f"({self.update_ratio}), the change gate's ceiling")
        if not is_int(self.recompute_buckets) or self.recompute_buckets < 1:
            raise ValueError(f"STCConfig.recompute_buckets must be an integer >= 1, got {self.recompute_buckets!r}")
        if not is_number(self.keep_ratio) or not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"STCConfig.keep_ratio must be in (0, 1], got {self.keep_ratio!r}")
        if not is_number(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"STCConfig.alpha must be in [0, 1], got {self.alpha!r}")
        if self.history_window is not None and (not is_int(self.history_window) or self.history_window < 1):
            raise ValueError(f"STCConfig.history_window must be None or an integer >= 1, got {self.history_window!r}")
        if self.pruner_scoring not in PRUNER_SCORINGS:
            raise ValueError(
                f"STCConfig.pruner_scoring must be one of {', '.join(PRUNER_SCORINGS)}, got {self.pruner_scoring!r}"
            )
        if not is_number(self.novelty_weight) or not 0.0 <= self.novelty_weight <= 1.0:
            raise ValueError(f"STCConfig.novelty_weight must be in [0, 1], got {self.novelty_weight!r}")
        if not is_int(self.motion_radius) or self.motion_radius < 1:
            raise ValueError(f"STCConfig.motion_radius must be an integer >= 1, got {self.motion_radius!r}")
        if not is_number(self.mix_weight) or not 0.0 <= self.mix_weight <= 1.0:
            raise ValueError(f"STCConfig.mix_weight must be in [0, 1], got {self.mix_weight!r}")
        if not is_number(self.coverage) or not 0.0 <= self.coverage < float("inf"):
            raise ValueError(f"STCConfig.coverage must be a finite number >= 0, got {self.coverage!r}")
        if self.pruner_budget not in PRUNER_BUDGETS:
            raise ValueError(f"STCConfig.pruner_budget must be one of {', '.join(PRUNER_BUDGETS)}, got {self.pruner_budget!r}")
        if not is_number(self.budget_floor) or not 0.0 <= self.budget_floor <= 1.0:
            raise ValueError(f"STCConfig.budget_floor must be in [0, 1], got {self.budget_floor!r}")

    @property
    def reuses_vit(self) -> bool:
        """True when the Cacher can skip any ViT work (otherwise it is exactly the dense ViT)."""
        return self.cacher and self.cache_interval > 1 and self.update_ratio < 1.0

    @property
    def prunes(self) -> bool:
        """True when the Pruner can drop any token."""
        return self.pruner and self.keep_ratio < 1.0

    @property
    def pruner_knobs(self) -> dict:
        """The keyword arguments `stc.pruner.prune_frames` takes from this config: the chosen
        scorer's knobs and coverage."""
        knobs = {name: getattr(self, name) for name in SCORERS[self.pruner_scoring].knobs if name != "history_window"}
        return {**knobs, "coverage": self.coverage}

    def replace(self, **changes) -> STCConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def off(cls) -> STCConfig:
        """A config with both parts switched off: the patched model behaves like the original."""
        return cls(cacher=False, pruner=False)
