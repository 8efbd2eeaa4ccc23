"""Named methods selectable with `--method`: STC and its parts (peer methods join in `stc bench`)."""

from __future__ import annotations

from .config import STCConfig

STC_METHODS = {
    "dense": "no compression (the unpatched model)",
    "stc": "STC-Cacher + STC-Pruner",
    "stc-cacher": "STC-Cacher only (ViT reuse)",
    "stc-pruner": "STC-Pruner only (LLM token pruning)",
}


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


def method_config(name: str, base: STCConfig | None = None):
    """The config of any method selectable by name (None for "dense")."""
    return stc_method_config(name, base)
