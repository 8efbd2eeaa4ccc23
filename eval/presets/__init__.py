"""Random-weight models with real architectures, built from configs (no hub access), one module
per family; and `load_model`, which takes a preset name or a checkpoint folder.

Used by the tests (tiny sizes), by `stc bench` (real geometries) and as a fallback demo model.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import torch

from stc.eval.presets import llava_onevision, qwen3, qwen_vl
from stc.eval.presets.common import (IMAGE_TOKEN, PRESET_WORDS, TINY_VOCAB, VIDEO_TOKEN, VISION_END,  # noqa: F401
                                     VISION_START, build_qwen_word_tokenizer, build_word_tokenizer)
from stc.eval.presets.llava_onevision import (LLAVA_OV_GEOMETRIES, LlavaOnevisionGeometry,  # noqa: F401
                                              build_llava_onevision, llava_onevision_config, preset_processor)
from stc.eval.presets.qwen3 import (QWEN3_GEOMETRIES, QWEN3_MEAN_STD, Qwen3Geometry, build_qwen3,  # noqa: F401
                                    qwen3_config, qwen3_preset_processor)
from stc.eval.presets.qwen_vl import (QWEN_VL_GEOMETRIES, QwenVLGeometry, build_qwen_vl,  # noqa: F401
                                      qwen_preset_processor, qwen_vl_config)
from stc.errors import ConfigError
from stc.integrations.loading import (CheckpointError, checkpoint_fingerprint, kv_bytes_per_token, load_checkpoint,
                                      require_working_torchvision)

# name -> builder(dtype, seed, device) returning (model, processor); random weights, real architectures.
PRESETS = {**llava_onevision.PRESETS, **qwen_vl.PRESETS, **qwen3.PRESETS}


def build_preset(name: str, dtype=torch.float32, seed: int = 0, device="cpu"):
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name](dtype=dtype, seed=seed, device=device)



def load_model(name: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | None = None):
    """(model, processor, description) for a preset name (random weights, real architecture)
    or a checkpoint folder."""
    if str(name) in PRESETS:
        require_working_torchvision()
        model, processor = build_preset(str(name), dtype=dtype or torch.float32, device=device)
        return model, processor, f"preset {name} (random weights)"
    if not Path(name).exists() and "/" not in str(name) and "\\" not in str(name):
        close = difflib.get_close_matches(str(name), PRESETS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise CheckpointError(f"{name}: neither a checkpoint folder nor a preset ({hint}presets: {', '.join(sorted(PRESETS))})")
    model, processor = load_checkpoint(name, device, dtype)
    return model, processor, f"checkpoint {name}"


def weights_fingerprint(name: str | os.PathLike) -> str:
    """A short id of a preset or of a checkpoint folder's weights (see `checkpoint_fingerprint`)."""
    return f"preset:{name}" if str(name) in PRESETS else checkpoint_fingerprint(name)


def model_config(name: str | os.PathLike):
    """The config of a preset or of a checkpoint folder, without building or loading weights."""
    configs = ((llava_onevision, llava_onevision_config), (qwen_vl, qwen_vl_config), (qwen3, qwen3_config))
    for module, config in configs:
        if str(name) in module.PRESETS:
            return config(str(name))
    from transformers import AutoConfig  # on use: transformers takes seconds to load

    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the config in {name}: {exc}") from None


def check_memory_budget(name: str | os.PathLike, budget: int | None, dtype: torch.dtype) -> None:
    """ConfigError before any weight is loaded when `budget` cannot hold one token of the model's
    KV (a budget that holds that much but not the sink and window is refused once the stream starts)."""
    if budget is None or (str(name) not in PRESETS and not (Path(name) / "config.json").is_file()):
        return  # no budget, or no model there: load_model says so
    per_token = kv_bytes_per_token(model_config(name), dtype)
    if budget < per_token:
        raise ConfigError(f"--memory-budget {budget} bytes cannot hold one token of this model's KV "
                          f"({per_token} bytes per token); give at least the sink and the window, e.g. 64MiB")
