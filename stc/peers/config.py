"""`MethodConfig`: a peer method by name, its budget and its knobs, validated against the
method's `Option`s."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from stc.peers.base import Selector
from stc.peers.registry import PEER_METHODS
from stc.validation import is_number


@dataclass(frozen=True)
class MethodConfig:
    """A peer method for one patched model (`stc.patch(model, stc.MethodConfig("visionzip"))`).

    method:     a name of PEER_METHODS (see `stc.methods.METHODS`).
    keep_ratio: share of visual tokens per frame the LLM gets in budget mode, in (0, 1]:
                k = round(n * keep_ratio), at least 1.
    options:    the method's knobs (documented on its selector class); missing ones take their
                defaults, which are filled in here.
    """

    method: str
    keep_ratio: float = 0.3
    options: Mapping = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.method not in PEER_METHODS:
            raise ValueError(f"MethodConfig.method: unknown peer method {self.method!r}; choose from {', '.join(PEER_METHODS)}")
        if not is_number(self.keep_ratio) or not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"MethodConfig.keep_ratio must be in (0, 1], got {self.keep_ratio!r}")
        if not isinstance(self.options, Mapping):
            raise ValueError(f"MethodConfig.options must be a mapping, got {type(self.options).__name__}")
        known = self.selector.options
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            choices = ", ".join(known) or "none"
            raise ValueError(f"MethodConfig.options: unknown option {unknown[0]!r} for {self.method} (options: {choices})")
        resolved = {name: self.options.get(name, option.default) for name, option in known.items()}
        for name, value in resolved.items():
            if not known[name].accepts(value):
                raise ValueError(f"MethodConfig.options[{name!r}] of {self.method} must be {known[name].rule}, got {value!r}")
        object.__setattr__(self, "options", resolved)

    @property
    def selector(self) -> type[Selector]:
        return PEER_METHODS[self.method]

    @property
    def prunes(self) -> bool:
        """Peer selectors always run (budget mode keeps k of n tokens per frame)."""
        return True

    @property
    def reuses_vit(self) -> bool:
        """Reuse of ViT work across frames is STC-Cacher's; no peer method does it."""
        return False

    def replace(self, **changes) -> MethodConfig:
        """A copy with some fields changed (validated again)."""
        values = {"method": self.method, "keep_ratio": self.keep_ratio, "options": dict(self.options)}
        values.update(changes)
        return MethodConfig(**values)

    def make_selector(self, stream: int = 0) -> Selector:
        return self.selector(self, stream)
