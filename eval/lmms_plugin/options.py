"""The `--model_args` of the stc lmms-eval models: parsed, checked, and turned into the STC
method config and the streaming engine's knobs. An unknown or out-of-range argument is an error
naming it; nothing falls back to a default silently."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import stc
from stc.methods import METHODS, method_config, options_used

# every STCConfig field but cacher/pruner (the method decides those); a test keeps the two in step
STC_KNOBS = {"keep_ratio": float, "cache_interval": int, "update_ratio": float, "cut_threshold": float,
             "alpha": float, "history_window": int, "pruner_scoring": str, "novelty_weight": float,
             "motion_radius": int, "mix_weight": float, "coverage": float, "pruner_budget": str, "budget_floor": float, "compile": bool, "drift_threshold": float,
             "change_threshold": float, "min_update_ratio": float, "recompute_buckets": int,
             "share_selection": bool, "refresh_tokens": bool}
SESSION_KNOBS = {"n_local": int, "topk": int, "kv_bits": int, "kv_scheme": str, "memory_budget": int,
                 "sink_frames": int, "eviction": str}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


class ModelArgError(ValueError):
    """A `--model_args` entry that is unknown, of the wrong type or out of range."""


@dataclass
class PluginOptions:
    """Everything a model id reads from `--model_args` (see docs/lmms-eval.md)."""

    pretrained: str
    method: str = "stc"
    device: str | None = None
    dtype: str = "bfloat16"
    max_num_frames: int = 32  # offline requests: frames sampled per video (the built-in models' default)
    fps: float | None = None  # offline requests: sample at this rate (capped at max_num_frames) instead
    stream_fps: float = 1.0  # multi-round requests: the stream's sampling rate
    system_prompt: str | None = None
    max_new_tokens: int = 128  # when a task's generation_kwargs give none
    stc_knobs: dict = field(default_factory=dict)
    session_knobs: dict = field(default_factory=dict)

    def method_config(self) -> stc.STCConfig | stc.MethodConfig | None:
        """The method's config (None for dense: the model stays unpatched)."""
        try:
            return method_config(self.method, stc.STCConfig(**self.stc_knobs))
        except ValueError as exc:
            raise ModelArgError(f"model_args: {exc}") from None

    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def torch_device(self) -> str:
        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _typed(name: str, value, kind):
    """`value` as `kind` (lmms-eval hands ints, floats, bools or strings); None stays None."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    if kind is str:
        return str(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ModelArgError(f"model_args: {name} must be true or false, got {value!r}")
    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise ModelArgError(f"model_args: {name} must be {kind.__name__}, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ModelArgError(f"model_args: {name} must be {kind.__name__}, got {value!r}") from None


PLAIN = {"pretrained": str, "method": str, "device": str, "dtype": str, "max_num_frames": int, "fps": float,
         "stream_fps": float, "system_prompt": str, "max_new_tokens": int}
ALIASES = {"max_frames_num": "max_num_frames"}  # llava_onevision's built-in name for the same option


def parse_model_args(args: dict, model_id: str) -> PluginOptions:
    """PluginOptions from the keyword arguments lmms-eval passes a model class."""
    args = dict(args)
    batch = args.pop("batch_size", None)
    args.pop("max_batch_size", None)
    if batch not in (None, 1, "1"):
        raise ModelArgError(f"model_args: {model_id} answers one request at a time; batch_size must be 1, got {batch!r}")
    for alias, name in ALIASES.items():
        if alias in args:
            args[name] = args.pop(alias)
    known = {**PLAIN, **STC_KNOBS, **SESSION_KNOBS}
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ModelArgError(f"model_args: unknown argument(s) {', '.join(unknown)} for {model_id}; "
                            f"known: {', '.join(sorted([*known, *ALIASES]))}")
    if "pretrained" not in args:
        raise ModelArgError(f"model_args: {model_id} needs pretrained=<checkpoint folder or stc preset name>")
    values = {name: _typed(name, value, known[name]) for name, value in args.items()}
    options = PluginOptions(
        **{k: v for k, v in values.items() if k in PLAIN and v is not None},
        stc_knobs={k: v for k, v in values.items() if k in STC_KNOBS and (v is not None or k == "cut_threshold")},
        session_knobs={k: v for k, v in values.items() if k in SESSION_KNOBS and (v is not None or k == "memory_budget")},
    )
    if options.method not in METHODS:
        raise ModelArgError(f"model_args: unknown method {options.method!r}; choose from {', '.join(METHODS)}")
    if options.dtype not in DTYPES:
        raise ModelArgError(f"model_args: dtype must be one of {', '.join(DTYPES)}, got {options.dtype!r}")
    for name in ("max_num_frames", "max_new_tokens"):
        if getattr(options, name) < 1:
            raise ModelArgError(f"model_args: {name} must be >= 1, got {getattr(options, name)}")
    for name in ("fps", "stream_fps"):
        if getattr(options, name) is not None and not getattr(options, name) > 0:
            raise ModelArgError(f"model_args: {name} must be > 0, got {getattr(options, name)}")
    config = options.method_config()  # STCConfig checks its own ranges
    used, default = options_used(config), stc.STCConfig()
    unused = [k for k, v in options.stc_knobs.items() if k not in used and v != getattr(default, k)]
    if unused:  # as `stc` does: a setting with no effect would be recorded in the results as if it had one
        uses = f"it reads only {', '.join(used)}" if used else "the unpatched model: no STC setting applies"
        raise ModelArgError(f"model_args: {unused[0]}={options.stc_knobs[unused[0]]} has no effect with "
                            f"method={options.method} ({uses})")
    return options
