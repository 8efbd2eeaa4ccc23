"""Named methods selectable with `--method` and in `stc bench --methods`: STC and its parts, and
the peer methods of `stc.peers` (each documents its source, knobs and adaptations)."""

from __future__ import annotations

from .config import STCConfig
from .peers import PEER_METHODS, MethodConfig

STC_METHODS = {
    "dense": "no compression (the unpatched model)",
    "stc": "STC-Cacher + STC-Pruner",
    "stc-cacher": "STC-Cacher only (ViT reuse)",
    "stc-pruner": "STC-Pruner only (LLM token pruning)",
}
PEERS = {name: selector.description for name, selector in PEER_METHODS.items()}
METHODS = {**STC_METHODS, **PEERS}


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


def method_config(name: str, base: STCConfig | None = None) -> STCConfig | MethodConfig | None:
    """The config of any method selectable by name (None for "dense"); a peer method takes
    `base.keep_ratio` as its budget and its own default options."""
    base = STCConfig() if base is None else base
    if name in PEERS:
        return MethodConfig(name, keep_ratio=base.keep_ratio)
    if name in STC_METHODS:
        return stc_method_config(name, base)
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")

