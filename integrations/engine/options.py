"""A streaming session's knobs, their defaults and their checks, in one place.

`StreamingSession` takes them as keyword arguments (or a `SessionOptions`); the CLI reads the
defaults from here, so a default is written once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from stc.config import EVICTIONS
from stc.kv_quant import KV_BITS, SCHEMES
from stc.validation import is_int, is_number


@dataclass(frozen=True)
class SessionOptions:
    """Important: `n_local` (ingestion window, tokens), `topk` (blocks retrieved per question,
    per layer), `sample_fps`. Bounded memory (all off by default): `kv_bits`/`kv_scheme`
    (blocks quantized once they leave the window), `sink_frames` (first frames kept visible and
    never evicted), `memory_budget` (bytes; then `eviction`: least novel or oldest first)."""

    n_local: int = 15000
    topk: int = 64
    sample_fps: float = 1.0
    max_new_tokens: int = 64
    system_prompt: str | None = None
    vit_batch: int = 16
    pipeline: bool = False
    kv_bits: int = 16
    kv_scheme: str = "kivi"
    sink_frames: int = 0
    memory_budget: int | None = None
    eviction: str = "novelty"

    def __post_init__(self):
        if not isinstance(self.pipeline, bool):
            raise ValueError(f"pipeline must be True or False, got {self.pipeline!r}")
        if self.kv_bits not in KV_BITS or isinstance(self.kv_bits, bool):
            raise ValueError(f"kv_bits must be one of {', '.join(map(str, KV_BITS))}, got {self.kv_bits!r}")
        if self.kv_scheme not in SCHEMES:
            raise ValueError(f"kv_scheme must be one of {', '.join(SCHEMES)}, got {self.kv_scheme!r}")
        if not _is_count(self.sink_frames, 0):
            raise ValueError(f"sink_frames must be an integer >= 0, got {self.sink_frames!r}")
        if self.eviction not in EVICTIONS:
            raise ValueError(f"eviction must be one of {', '.join(EVICTIONS)}, got {self.eviction!r}")
        if self.memory_budget is not None and not _is_count(self.memory_budget, 1):
            raise ValueError(f"memory_budget must be a number of bytes >= 1 or None, got {self.memory_budget!r}")
        for name in ("n_local", "topk", "max_new_tokens", "vit_batch"):
            if not _is_count(getattr(self, name), 1):
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not is_number(self.sample_fps) or not self.sample_fps > 0:
            raise ValueError(f"sample_fps must be > 0, got {self.sample_fps!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def _is_count(value, least: int) -> bool:
    return is_int(value) and value >= least


DEFAULTS = SessionOptions()
NAMES = tuple(f.name for f in fields(SessionOptions))
MEMORY_OPTIONS = ("kv_bits", "kv_scheme", "sink_frames", "memory_budget", "eviction")
