"""stc: Streaming Token Compression (STC-Cacher + STC-Pruner) for streaming VideoLLMs.

    import stc
    stc.patch(model, stc.STCConfig(cache_interval=2, update_ratio=0.25, keep_ratio=0.3))
    out = model.generate(**inputs)      # same call, fewer ViT and LLM tokens
    print(stc.stats(model))
"""

from .api import (
    UnsupportedModelError,
    config_of,
    is_patched,
    patch,
    patched,
    reset,
    stats,
    stream,
    supported_families,
    unpatch,
)
from .config import STCConfig

__version__ = "0.1.0"

__all__ = [
    "STCConfig",
    "UnsupportedModelError",
    "config_of",
    "is_patched",
    "patch",
    "patched",
    "reset",
    "stats",
    "stream",
    "supported_families",
    "unpatch",
]
