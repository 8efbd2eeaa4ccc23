"""stc: Streaming Token Compression (STC-Cacher + STC-Pruner) for streaming VideoLLMs.

    import stc
    stc.patch(model, stc.STCConfig(cache_interval=2, update_ratio=0.25, keep_ratio=0.3))
    out = model.generate(**inputs)      # same call, fewer ViT and LLM tokens
    print(stc.stats(model))

Peer methods (ToMe, VisionZip, VidCom2, DyCoke, TimeChat-Online, EVS, uniform, random) plug in the
same way: `stc.patch(model, stc.MethodConfig("visionzip", keep_ratio=0.3))` (see `stc.peers`).
"""

from stc.api import (
    config_of,
    is_patched,
    patch,
    patched,
    reset,
    stats,
    stream,
    unpatch,
)
from stc.config import STCConfig
from stc.errors import ConfigError, InputError, MemoryBudgetError, STCError, UnsupportedModelError
from stc.peers import MethodConfig
from stc.registry import supported_families

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "InputError",
    "MemoryBudgetError",
    "MethodConfig",
    "STCError",
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
