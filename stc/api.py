"""Public API: patch / unpatch / patched / reset / stream / stats.

Adapters (one per model family, in `stc.integrations.adapters`) are looked up by the model's
`config.model_type` in the family table, `stc.registry.FAMILIES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager

from stc.config import STCConfig
from stc.errors import UnsupportedModelError
from stc.registry import FAMILIES, supported_model_types
from stc.peers import MethodConfig
from stc.state import STCState

_STATE_ATTR = "_stc_state"
_ADAPTER_ATTR = "_stc_adapter"


def _model_type(model) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def adapter_for(model):
    """A new adapter instance for `model`'s family, or UnsupportedModelError naming the supported
    families (`adapter_of` gives the one a patched model runs with)."""
    model_type = _model_type(model)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"STC does not support {type(model).__name__} (model_type={model_type!r}). "
            f"Supported families: {supported_model_types()}."
        )
    module_name, class_name = FAMILIES[model_type].adapter.split(":")
    adapter = getattr(importlib.import_module(module_name), class_name)()
    adapter.check(model)
    return adapter


def is_patched(model) -> bool:
    return hasattr(model, _STATE_ATTR)


def _state(model) -> STCState:
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise ValueError(f"{type(model).__name__} is not patched; call stc.patch(model, config) first")
    return state


def patch(model, config: STCConfig | MethodConfig | None = None):
    """Install STC (an STCConfig) or a peer method (a MethodConfig) on this model instance (its
    class is untouched) and return the model.

    Idempotent: patching a patched model only swaps the config (and starts a new stream).
    """
    config = STCConfig() if config is None else config
    if not isinstance(config, (STCConfig, MethodConfig)):
        raise TypeError(f"config must be an stc.STCConfig or an stc.MethodConfig, got {type(config).__name__}")
    if is_patched(model):
        getattr(model, _ADAPTER_ATTR).check_config(model, config)
        state = _state(model)
        state.config = config
        state.reset()
        return model
    adapter = adapter_for(model)
    adapter.check_config(model, config)
    state = STCState(config)
    adapter.install(model, state)
    object.__setattr__(model, _STATE_ATTR, state)
    object.__setattr__(model, _ADAPTER_ATTR, adapter)
    return model


def unpatch(model):
    """Remove STC from the model instance, restoring every original method and hook."""
    if not is_patched(model):
        return model
    getattr(model, _ADAPTER_ATTR).uninstall(model)
    object.__delattr__(model, _STATE_ATTR)
    object.__delattr__(model, _ADAPTER_ATTR)
    return model


@contextmanager
def patched(model, config: STCConfig | MethodConfig | None = None) -> Iterator:
    """`with stc.patched(model, cfg):` STC is on inside the block; on exit the model is as before
    (unpatched, or patched with its previous config)."""
    previous = _state(model).config if is_patched(model) else None
    patch(model, config)
    try:
        yield model
    finally:
        if previous is None:
            unpatch(model)
        else:
            patch(model, previous)


def reset(model) -> None:
    """Start a new stream: forget the Cacher's references, the Pruner's history and the stats."""
    _state(model).reset()


@contextmanager
def stream(model) -> Iterator:
    """Within the block, successive calls that pass video continue one stream (batch row b of
    every call is stream b); outside it, each such call is a stream of its own."""
    state = _state(model)
    if state.streaming:
        raise RuntimeError("stc.stream is already active for this model")
    state.reset()
    state.streaming = True
    try:
        yield model
    finally:
        state.streaming = False
        state.reset()


def stats(model) -> dict:
    """Counters of the current stream: frames, reference_frames, vit_tokens,
    vit_tokens_recomputed, llm_tokens_in, llm_tokens_kept, vit_reuse_ratio, llm_keep_ratio,
    llm_tokens_kept_per_frame (the mean over all frames) and its _min and _max over the frames that
    went through a selection (None before any; they differ with the adaptive budget and the peers'
    threshold modes) (a "frame" is a temporal slice of 2 frames for the Qwen families).
    A StreamingSession unpatches the model it patched when it closes; its `stats()` keeps them."""
    if not is_patched(model):
        raise ValueError(
            f"{type(model).__name__} is not patched, so it has no STC counters: call stc.patch(model, config) first; "
            "for a StreamingSession's stream (whose close unpatches the model it patched), read session.stats()")
    return _state(model).stats.as_dict()


def kept_range(stats: dict, frames_per_block: int, mean: float) -> tuple[float, float]:
    """Fewest and most LLM tokens a frame kept (`stc.stats`' per-block min and max over
    `frames_per_block`, the frames one block holds); `mean` for both when nothing was selected
    (every frame of one video kept all its tokens)."""
    if stats["llm_tokens_kept_per_frame_min"] is None:
        return mean, mean
    return stats["llm_tokens_kept_per_frame_min"] / frames_per_block, stats["llm_tokens_kept_per_frame_max"] / frames_per_block


def config_of(model) -> STCConfig | MethodConfig:
    """The config a patched model runs with."""
    return _state(model).config


def state_of(model) -> STCState:
    """The shared state object of a patched model (for engines and benchmarks)."""
    return _state(model)


def adapter_of(model):
    """The adapter `patch` installed on this model: engines use it, so a patched model has one
    adapter instance."""
    _state(model)  # the same error as state_of for an unpatched model
    return getattr(model, _ADAPTER_ATTR)
