"""Qwen2-VL / Qwen2.5-VL geometries and their random-weight presets."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stc.eval.presets.common import (IMAGE_TOKEN, PRESET_WORDS, TINY_VOCAB, VIDEO_TOKEN, VISION_END, VISION_START,
                                     random_model, text_config, build_qwen_word_tokenizer)
from stc.integrations.processing import QwenVideoPreprocessing, VideoLLMProcessor

QWEN_SPECIAL_IDS = {"image": 151655, "video": 151656, "vision_start": 151652, "vision_end": 151653}
QWEN_TINY_IDS = {"image": IMAGE_TOKEN, "video": VIDEO_TOKEN, "vision_start": VISION_START, "vision_end": VISION_END}


@dataclass(frozen=True)
class QwenVLGeometry:
    """Sizes of a Qwen2-VL / Qwen2.5-VL model (family = config model_type)."""

    family: str  # "qwen2_vl" or "qwen2_5_vl"
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    patch_size: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    mrope_section: tuple[int, int, int]
    vocab_size: int = TINY_VOCAB
    window_size: int = 112  # Qwen2.5-VL only
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)  # Qwen2.5-VL only
    tokens_per_second: int = 2  # Qwen2.5-VL only
    rope_theta: float = 1e6
    tie_word_embeddings: bool = False
    min_pixels: int = 128 * 28 * 28  # frame preprocessing of the preset processor
    max_pixels: int = 768 * 28 * 28


_QWEN25_VISION = dict(vision_depth=32, vision_hidden=1280, vision_intermediate=3420, vision_heads=16, patch_size=14)
_QWEN25_VISION_NARROW = dict(vision_depth=32, vision_hidden=320, vision_intermediate=855, vision_heads=4, patch_size=14)
_QWEN25_3B_TEXT = dict(text_hidden=2048, text_intermediate=11008, text_heads=16, text_kv_heads=2,
                       mrope_section=(16, 24, 24), vocab_size=151936, tie_word_embeddings=True)
_QWEN25_7B_TEXT = dict(text_hidden=3584, text_intermediate=18944, text_heads=28, text_kv_heads=4,
                       mrope_section=(16, 24, 24), vocab_size=152064)

QWEN_VL_GEOMETRIES = {
    # Qwen2.5-VL-3B / 7B: 32-block ViT (width 1280, window 112 px, full attention at 7/15/23/31)
    # + Qwen2.5-3B (36 layers) / Qwen2.5-7B (28 layers).
    "qwen2.5-vl-3b": QwenVLGeometry("qwen2_5_vl", **_QWEN25_VISION, text_layers=36, **_QWEN25_3B_TEXT),
    "qwen2.5-vl-7b": QwenVLGeometry("qwen2_5_vl", **_QWEN25_VISION, text_layers=28, **_QWEN25_7B_TEXT),
    # Same layouts at a quarter of the ViT width (head dim kept) and 8 LLM layers: quick runs.
    "qwen2.5-vl-3b-narrow": QwenVLGeometry("qwen2_5_vl", **_QWEN25_VISION_NARROW, text_layers=8, **_QWEN25_3B_TEXT),
    "qwen2.5-vl-7b-narrow": QwenVLGeometry("qwen2_5_vl", **_QWEN25_VISION_NARROW, text_layers=8, **_QWEN25_7B_TEXT),
    # Test sizes: patch 4, merge 2 -> frames resized to multiples of 8 px; 24 px -> 6x6 patches,
    # 3x3 = 9 LLM tokens per temporal slice; Qwen2.5-VL windows of 2x2 merged tokens (16 px).
    "qwen2-vl-tiny": QwenVLGeometry(
        "qwen2_vl", 2, 32, 64, 4, 4, 32, 64, 2, 4, 2, (2, 1, 1), rope_theta=1e4, min_pixels=8 * 8, max_pixels=32 * 32
    ),
    "qwen2.5-vl-tiny": QwenVLGeometry(
        "qwen2_5_vl", 2, 32, 64, 4, 4, 32, 64, 2, 4, 2, (2, 1, 1), window_size=16, fullatt_block_indexes=(1,),
        tokens_per_second=4, rope_theta=1e4, min_pixels=8 * 8, max_pixels=32 * 32
    ),
}


def qwen_vl_config(geometry: QwenVLGeometry | str):
    """A Qwen2VLConfig or Qwen2_5_VLConfig for a geometry (token ids in the tiny vocab for tiny ones)."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig  # on use: transformers takes seconds to load

    g = QWEN_VL_GEOMETRIES[geometry] if isinstance(geometry, str) else geometry
    tiny_vocab = g.vocab_size <= TINY_VOCAB
    text = text_config(g, model_type="qwen2", rope_parameters={
        "rope_type": "default", "rope_theta": g.rope_theta, "mrope_section": list(g.mrope_section)})
    text.update(dict(pad_token_id=0, bos_token_id=1, eos_token_id=2) if tiny_vocab
                else dict(pad_token_id=151643, bos_token_id=151643, eos_token_id=151645))
    ids = QWEN_TINY_IDS if tiny_vocab else QWEN_SPECIAL_IDS
    common = dict(
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=g.tie_word_embeddings,
    )
    vision = {
        "depth": g.vision_depth,
        "num_heads": g.vision_heads,
        "patch_size": g.patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if g.family == "qwen2_vl":
        vision.update(embed_dim=g.vision_hidden, hidden_size=g.text_hidden, mlp_ratio=g.vision_intermediate // g.vision_hidden)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    if g.family == "qwen2_5_vl":
        vision.update(
            hidden_size=g.vision_hidden,
            intermediate_size=g.vision_intermediate,
            out_hidden_size=g.text_hidden,
            window_size=g.window_size,
            fullatt_block_indexes=list(g.fullatt_block_indexes),
            tokens_per_second=g.tokens_per_second,
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    raise ValueError(f"unknown Qwen-VL family {g.family!r}")


def build_qwen_vl(geometry: QwenVLGeometry | str, dtype=torch.float32, seed: int = 0, device="cpu"):
    """A random-weight Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration in
    eval mode, initialised on `device`."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration  # on use: transformers takes seconds to load

    config = qwen_vl_config(geometry)
    cls = Qwen2VLForConditionalGeneration if config.model_type == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
    return random_model(cls, config, dtype, seed, device)


def qwen_preset_processor(geometry: QwenVLGeometry | str):
    """A word-level Qwen-style tokenizer plus Qwen's video preprocessing for a geometry."""
    g = QWEN_VL_GEOMETRIES[geometry] if isinstance(geometry, str) else geometry
    frames = QwenVideoPreprocessing(min_pixels=g.min_pixels, max_pixels=g.max_pixels, patch_size=g.patch_size)
    return VideoLLMProcessor(build_qwen_word_tokenizer(PRESET_WORDS), frames)


def _qwen_preset(name: str):
    def build(dtype=torch.float32, seed: int = 0, device="cpu"):
        return build_qwen_vl(name, dtype=dtype, seed=seed, device=device), qwen_preset_processor(name)

    return build



PRESETS = {name: _qwen_preset(name) for name in QWEN_VL_GEOMETRIES}
