"""Qwen3-VL / Qwen3.5 (dense and MoE) geometries and their random-weight presets."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from stc.eval.presets.common import PRESET_WORDS, TINY_VOCAB, random_model, text_config, build_qwen_word_tokenizer
from stc.eval.presets.qwen_vl import QWEN_TINY_IDS
from stc.integrations.processing import QwenVideoPreprocessing, VideoLLMProcessor

@dataclass(frozen=True)
class Qwen3Geometry:
    """Sizes of a Qwen3-VL or Qwen3.5 model (family = config model_type). The vision encoder is
    the same kind in both (learned + rotary positions, full attention per temporal slice, a 2x2
    merger); Qwen3-VL feeds DeepStack taps to the first LLM layers, Qwen3.5's LLM mixes gated
    linear-attention layers with full-attention ones (`layer_types`)."""

    family: str  # "qwen3_vl", "qwen3_vl_moe", "qwen3_5" or "qwen3_5_moe"
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    patch_size: int
    position_grid: int  # learned positions on a position_grid x position_grid grid
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    head_dim: int
    mrope_section: tuple[int, int, int]
    deepstack: tuple[int, ...] = ()  # Qwen3-VL only
    full_attention_every: int = 4  # Qwen3.5 only: every 4th LLM layer has full attention
    linear_heads: tuple[int, int] = (16, 32)  # Qwen3.5 only: key / value heads of the linear layers
    linear_head_dim: int = 128
    partial_rotary_factor: float = 1.0
    experts: tuple[int, int, int] = (0, 0, 0)  # MoE families: experts, experts per token, expert width
    vocab_size: int = TINY_VOCAB
    rope_theta: float = 5e6
    tie_word_embeddings: bool = False
    min_pixels: int = 128 * 32 * 32  # frame preprocessing of the preset processor
    max_pixels: int = 768 * 32 * 32


_QWEN3_VISION = dict(vision_depth=27, vision_hidden=1152, vision_intermediate=4304, vision_heads=16, patch_size=16, position_grid=48)
_QWEN3_VISION_NARROW = dict(vision_depth=27, vision_hidden=288, vision_intermediate=1076, vision_heads=4, patch_size=16, position_grid=48)
_QWEN3_VL_8B_TEXT = dict(text_hidden=4096, text_intermediate=12288, text_heads=32, text_kv_heads=8, head_dim=128,
                         mrope_section=(24, 20, 20), deepstack=(8, 16, 24), vocab_size=151936)
_QWEN3_5_9B_TEXT = dict(text_hidden=4096, text_intermediate=12288, text_heads=16, text_kv_heads=4, head_dim=256,
                        mrope_section=(11, 11, 10), partial_rotary_factor=0.25, vocab_size=248320, rope_theta=1e7)

QWEN3_GEOMETRIES = {
    # Qwen3-VL-8B: 27-block ViT (width 1152, patch 16, DeepStack taps after blocks 8/16/24) + a
    # 36-layer Qwen3 LLM (width 4096, 8 KV heads).
    "qwen3-vl-8b": Qwen3Geometry("qwen3_vl", **_QWEN3_VISION, text_layers=36, **_QWEN3_VL_8B_TEXT),
    # Qwen3.5 at a comparable size (the 9B layout of transformers' Qwen3_5Config defaults): the same
    # kind of ViT without DeepStack + 32 LLM layers, 3 gated linear-attention layers to 1 full one.
    "qwen3.5-9b": Qwen3Geometry("qwen3_5", **_QWEN3_VISION, text_layers=32, **_QWEN3_5_9B_TEXT),
    # Quarter-width ViT (head dim kept) and 8 LLM layers: quick runs on a CPU.
    "qwen3-vl-8b-narrow": Qwen3Geometry("qwen3_vl", **_QWEN3_VISION_NARROW, text_layers=8, **_QWEN3_VL_8B_TEXT),
    "qwen3.5-9b-narrow": Qwen3Geometry("qwen3_5", **_QWEN3_VISION_NARROW, text_layers=8, **_QWEN3_5_9B_TEXT),
    # Test sizes: patch 4, merge 2 -> 24 px frames give 3x3 = 9 LLM tokens per temporal slice.
    "qwen3-vl-tiny": Qwen3Geometry("qwen3_vl", 3, 32, 64, 4, 4, 4, 32, 64, 3, 4, 2, 8, (2, 1, 1), deepstack=(0, 1),
                                   rope_theta=1e4, min_pixels=8 * 8, max_pixels=32 * 32),
    "qwen3.5-tiny": Qwen3Geometry("qwen3_5", 2, 32, 64, 4, 4, 4, 32, 64, 4, 4, 2, 16, (2, 1, 1), full_attention_every=2,
                                  linear_heads=(2, 4), linear_head_dim=8, partial_rotary_factor=0.5, rope_theta=1e4,
                                  min_pixels=8 * 8, max_pixels=32 * 32),
}
# The MoE variants at test size: the same, with 4 experts (2 per token) in every LLM layer.
QWEN3_GEOMETRIES["qwen3-vl-moe-tiny"] = replace(QWEN3_GEOMETRIES["qwen3-vl-tiny"], family="qwen3_vl_moe", experts=(4, 2, 32))
QWEN3_GEOMETRIES["qwen3.5-moe-tiny"] = replace(QWEN3_GEOMETRIES["qwen3.5-tiny"], family="qwen3_5_moe", experts=(4, 2, 32))


# family -> (config class, model class) in transformers
QWEN3_CLASSES = {
    "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
    "qwen3_vl_moe": ("Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration"),
    "qwen3_5": ("Qwen3_5Config", "Qwen3_5ForConditionalGeneration"),
    "qwen3_5_moe": ("Qwen3_5MoeConfig", "Qwen3_5MoeForConditionalGeneration"),
}


def qwen3_config(geometry: Qwen3Geometry | str):
    """A Qwen3VLConfig or Qwen3_5Config for a geometry (token ids in the tiny vocab for tiny ones)."""
    import transformers  # on use: transformers takes seconds to load

    g = QWEN3_GEOMETRIES[geometry] if isinstance(geometry, str) else geometry
    tiny_vocab = g.vocab_size <= TINY_VOCAB
    rope = {"rope_type": "default", "rope_theta": g.rope_theta, "mrope_section": list(g.mrope_section),
            "mrope_interleaved": True}
    if g.partial_rotary_factor != 1.0:
        rope["partial_rotary_factor"] = g.partial_rotary_factor
    text = text_config(g, head_dim=g.head_dim, rope_parameters=rope)
    vision = {
        "depth": g.vision_depth,
        "hidden_size": g.vision_hidden,
        "intermediate_size": g.vision_intermediate,
        "num_heads": g.vision_heads,
        "patch_size": g.patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": g.text_hidden,
        "num_position_embeddings": g.position_grid**2,
    }
    ids = QWEN_TINY_IDS if tiny_vocab else None
    common = {} if ids is None else dict(
        image_token_id=ids["image"], video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"],
    )
    text.update(dict(pad_token_id=0, bos_token_id=1, eos_token_id=2) if tiny_vocab else {})
    experts, per_token, width = g.experts
    if g.family == "qwen3_vl_moe":
        text.update(num_experts=experts, num_experts_per_tok=per_token, moe_intermediate_size=width)
    if g.family == "qwen3_5_moe":
        text.update(num_experts=experts, num_experts_per_tok=per_token, moe_intermediate_size=width,
                    shared_expert_intermediate_size=width)
    config_class = getattr(transformers, QWEN3_CLASSES[g.family][0])
    if g.family.startswith("qwen3_vl"):
        vision["deepstack_visual_indexes"] = list(g.deepstack)
        return config_class(text_config=text, vision_config=vision, tie_word_embeddings=g.tie_word_embeddings, **common)
    if g.family.startswith("qwen3_5"):
        text.update(
            layer_types=["full_attention" if (i + 1) % g.full_attention_every == 0 else "linear_attention"
                         for i in range(g.text_layers)],
            linear_num_key_heads=g.linear_heads[0],
            linear_num_value_heads=g.linear_heads[1],
            linear_key_head_dim=g.linear_head_dim,
            linear_value_head_dim=g.linear_head_dim,
        )
        return config_class(text_config=text, vision_config=vision, tie_word_embeddings=g.tie_word_embeddings, **common)
    raise ValueError(f"unknown Qwen3 family {g.family!r}")


def build_qwen3(geometry: Qwen3Geometry | str, dtype=torch.float32, seed: int = 0, device="cpu"):
    """A random-weight Qwen3VLForConditionalGeneration / Qwen3_5ForConditionalGeneration in eval
    mode, initialised on `device`."""
    import transformers  # on use: transformers takes seconds to load

    config = qwen3_config(geometry)
    return random_model(getattr(transformers, QWEN3_CLASSES[config.model_type][1]), config, dtype, seed, device)


QWEN3_MEAN_STD = (0.5, 0.5, 0.5)  # Qwen3-VL's and Qwen3.5's pixel normalisation
# Qwen3-VL's processor puts "<{seconds:.1f} seconds>" before every temporal slice.
TIMESTAMP_WORDS = ("seconds", "<", ">", *"0123456789")


def qwen3_preset_processor(geometry: Qwen3Geometry | str):
    """A word-level Qwen-style tokenizer (timestamps included) plus Qwen's video preprocessing."""
    g = QWEN3_GEOMETRIES[geometry] if isinstance(geometry, str) else geometry
    frames = QwenVideoPreprocessing(min_pixels=g.min_pixels, max_pixels=g.max_pixels, patch_size=g.patch_size,
                                    mean=QWEN3_MEAN_STD, std=QWEN3_MEAN_STD)
    return VideoLLMProcessor(build_qwen_word_tokenizer(PRESET_WORDS + TIMESTAMP_WORDS), frames)


def _qwen3_preset(name: str):
    def build(dtype=torch.float32, seed: int = 0, device="cpu"):
        return build_qwen3(name, dtype=dtype, seed=seed, device=device), qwen3_preset_processor(name)

    return build



PRESETS = {name: _qwen3_preset(name) for name in QWEN3_GEOMETRIES}
