"""Named methods selectable with `--method` and in `stc bench --methods`: STC and its parts, and
the peer methods of `stc.peers` (each documents its source, knobs and adaptations)."""

from __future__ import annotations

from stc.config import STCConfig
from stc.peers import PEER_METHODS, MethodConfig
from stc.pruner import SCORERS

STC_METHODS = {
    "dense": "no compression (the unpatched model)",
    "stc": "STC-Cacher + STC-Pruner",
    "stc-cacher": "STC-Cacher only (ViT reuse)",
    "stc-pruner": "STC-Pruner only (LLM token pruning)",
}
PEERS = {name: s.description for name, s in PEER_METHODS.items() if not s.needs_ground_truth}
METHODS = {**STC_METHODS, **PEERS}
# References that read the scene's ground truth: only `stc eval synthetic` has it (see method_config).
REFERENCES = {name: s.description for name, s in PEER_METHODS.items() if s.needs_ground_truth}
CACHER_OPTIONS = ("cache_interval", "update_ratio", "cut_threshold", "compile", "drift_threshold", "change_threshold",
                  "min_update_ratio", "recompute_buckets", "share_selection", "refresh_tokens")  # STCConfig fields
GATE_OPTIONS = ("min_update_ratio", "recompute_buckets")  # read only with change_threshold
BUDGET_OPTIONS = ("budget_floor",)  # read only with pruner_budget "adaptive"
PRUNER_OPTIONS = ("keep_ratio", "alpha", "history_window", "pruner_scoring", "novelty_weight", "motion_radius", "mix_weight",
                  "coverage", "pruner_budget", "budget_floor")
SCORER_OPTIONS = frozenset(knob for scorer in SCORERS.values() for knob in scorer.knobs)  # read by some scorers only


def options_used(config: STCConfig | MethodConfig | None) -> tuple[str, ...]:
    """The STCConfig knobs a method's config reads: the Cacher's and the Pruner's for what is on
    (a scorer's knobs only with that scorer, the change gate's floor and buckets only with its
    threshold), keep_ratio for a peer method (its budget), none for dense (None). A knob outside
    these set to a non-default value has no effect. A scorer's own knobs (`SCORER_OPTIONS`: alpha,
    history_window, ...) count only with a scorer that reads them (`stc.pruner.SCORERS`)."""
    if config is None:
        return ()
    if isinstance(config, MethodConfig):
        return ("keep_ratio",)
    scorer_knobs = SCORERS[config.pruner_scoring].knobs
    pruner = tuple(name for name in PRUNER_OPTIONS if (name not in SCORER_OPTIONS or name in scorer_knobs)
                   and (name not in BUDGET_OPTIONS or config.pruner_budget == "adaptive"))
    cacher = tuple(name for name in CACHER_OPTIONS if name not in GATE_OPTIONS or config.change_threshold is not None)
    return (cacher if config.cacher else ()) + (pruner if config.pruner else ())


def stc_method_config(method: str, base: STCConfig | None = None) -> STCConfig | None:
    """The STCConfig of an STC method name (None for "dense"); `base` supplies the knobs."""
    base = STCConfig() if base is None else base
    if method == "dense":
        return None
    if method == "stc":
        return base.replace(cacher=True, pruner=True)
    if method == "stc-cacher":
        return base.replace(cacher=True, pruner=False)
    if method == "stc-pruner":
        return base.replace(cacher=False, pruner=True)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(STC_METHODS)}")


def method_config(name: str, base: STCConfig | None = None, ground_truth: bool = False) -> STCConfig | MethodConfig | None:
    """The config of any method selectable by name (None for "dense"); a peer method takes
    `base.keep_ratio` as its budget and its own default options. A reference (a peer method that
    reads the scene: `REFERENCES`' oracle, and one an evaluation registers later, such as the
    synthetic testbed's evidence oracle) is refused unless the caller has the scene's ground
    truth (`ground_truth`)."""
    base = STCConfig() if base is None else base
    reference = getattr(PEER_METHODS.get(name), "needs_ground_truth", False)  # also one registered later
    if reference and not ground_truth:
        raise ValueError(f"method {name} needs the scene's ground truth (the cells objects cover): "
                         "only `stc eval synthetic` has it")
    if name in PEERS or reference:
        return MethodConfig(name, keep_ratio=base.keep_ratio)
    if name in STC_METHODS:
        return stc_method_config(name, base)
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")

