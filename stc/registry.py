"""The one table of model families: `config.model_type` -> the family's name (shown to users) and
its adapter ("module:Class", imported only when a model of that type is patched, so that importing
`stc` never imports transformers). Adding a family is one row here and one adapter file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    adapter: str  # "module:Class" of its VideoLLMAdapter


_LLAVA = "stc.integrations.adapters.llava_onevision:LlavaOnevisionAdapter"
_QWEN = "stc.integrations.adapters.qwen_vl:QwenVLAdapter"
_QWEN3 = "stc.integrations.adapters.qwen3_vl:Qwen3VLAdapter"

FAMILIES: dict[str, Family] = {
    "llava_onevision": Family("LLaVA-OneVision", _LLAVA),
    "qwen2_vl": Family("Qwen2-VL", _QWEN),
    "qwen2_5_vl": Family("Qwen2.5-VL", _QWEN),
    "qwen3_vl": Family("Qwen3-VL", _QWEN3),
    "qwen3_vl_moe": Family("Qwen3-VL-MoE", _QWEN3),
    "qwen3_5": Family("Qwen3.5", _QWEN3),
    "qwen3_5_moe": Family("Qwen3.5-MoE", _QWEN3),
}


def family_name(model_type: str | None) -> str | None:
    """The family shown to users for a model_type, None for one no adapter knows."""
    family = FAMILIES.get(model_type)
    return family.name if family else None


def supported_families() -> list[str]:
    return sorted({family.name for family in FAMILIES.values()})


def supported_model_types() -> str:
    """One line for error messages: the families and the model_type values they cover."""
    return f"{', '.join(supported_families())} (model_type: {', '.join(sorted(FAMILIES))})"
