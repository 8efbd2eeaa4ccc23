"""The methods `stc bench` compares, as named on the command line (`stc-cacher:cache_interval=4`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from stc.config import STCConfig
from stc.methods import PEERS, method_config, options_used
from stc.peers import MethodConfig


# per-method StreamingSession settings in --methods (e.g. `stc:kv_bits=2`); the rest of a
# method's overrides are its own options
SESSION_SETTINGS = {"pipeline": bool, "n_local": int, "kv_bits": int, "kv_scheme": str, "sink_frames": int,
                    "memory_budget": int, "eviction": str}


@dataclass
class MethodSpec:
    """A method as named on the command line, e.g. `stc-cacher:cache_interval=4`."""

    label: str
    name: str
    config: object  # STCConfig, None (dense) or a peer method config
    session: dict = field(default_factory=dict)  # StreamingSession overrides: SESSION_SETTINGS


def parse_methods(text: str, base) -> list[MethodSpec]:
    """Comma-separated method names, each optionally with `:key=value` overrides: STCConfig
    fields for STC's methods, keep_ratio or the method's options for peer methods (e.g.
    `stc-cacher:cache_interval=4`, `timechat:threshold=0.5`, `evs:keep_ratio=0.25`), and for any
    method the session settings `pipeline=true` (pipelined ingestion), `n_local`, `kv_bits`,
    `kv_scheme`, `sink_frames`, `memory_budget` (bytes) (e.g. `stc:kv_bits=2`)."""
    specs = []
    for item in [part.strip() for part in text.split(",") if part.strip()]:
        name, *overrides = item.split(":")
        changes = {}
        for override in overrides:
            key, _, value = override.partition("=")
            changes[key] = _parse_value(value)
        session = {key: changes.pop(key) for key in SESSION_SETTINGS if key in changes}
        for key, value in session.items():
            kind = SESSION_SETTINGS[key]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                expected = {bool: "true or false", int: "an integer", str: "a name"}[kind]
                raise ValueError(f"{key} must be {expected} in method {item!r}")
        if name in PEERS:
            keep_ratio = changes.pop("keep_ratio", base.keep_ratio)
            config = MethodConfig(name, keep_ratio=keep_ratio, options=changes)
        else:
            unknown = [key for key in changes if key not in STCConfig.__dataclass_fields__]
            if unknown:
                raise ValueError(f"unknown setting {unknown[0]!r} in method {item!r}")
            config = method_config(name, base.replace(**changes))
            used = options_used(config)
            unused = [key for key in changes if key not in used]
            if unused:
                uses = ", ".join(used) or "none: no STC setting applies to dense"
                raise ValueError(f"{unused[0]} has no effect in method {item!r} (it uses {uses})")
        specs.append(MethodSpec(label=item, name=name, config=config, session=session))
    if not specs:
        raise ValueError("no methods given")
    return specs


def _parse_value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
