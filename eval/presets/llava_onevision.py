"""LLaVA-OneVision geometries (SigLIP + Qwen2) and their random-weight presets."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stc.eval.presets.common import IMAGE_TOKEN, PRESET_WORDS, TINY_VOCAB, VIDEO_TOKEN, random_model, text_config, build_word_tokenizer
from stc.integrations.processing import FramePreprocessing, VideoLLMProcessor


@dataclass(frozen=True)
class LlavaOnevisionGeometry:
    image_size: int
    patch_size: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    vocab_size: int = TINY_VOCAB


LLAVA_OV_GEOMETRIES = {
    # SigLIP-so400m (384 px, patch 14, 729 tokens, width 1152, 26 layers) + Qwen2-0.5B.
    "llava-ov-0.5b": LlavaOnevisionGeometry(384, 14, 1152, 4304, 26, 16, 896, 4864, 24, 14, 2, 151936),
    # Same SigLIP + Qwen2-7B.
    "llava-ov-7b": LlavaOnevisionGeometry(384, 14, 1152, 4304, 26, 16, 3584, 18944, 28, 28, 4, 152064),
    # SigLIP geometry at a quarter of the width, Qwen2-0.5B width with fewer layers: quick runs.
    "llava-ov-0.5b-narrow": LlavaOnevisionGeometry(384, 14, 288, 1076, 26, 4, 896, 4864, 8, 14, 2, 151936),
    "llava-ov-7b-narrow": LlavaOnevisionGeometry(384, 14, 288, 1076, 26, 4, 896, 4864, 8, 14, 2, 152064),
    # Test size: 28 px / patch 7 -> 16 ViT tokens, 4 LLM tokens per frame.
    "llava-ov-tiny": LlavaOnevisionGeometry(28, 7, 32, 64, 2, 4, 32, 64, 2, 4, 2),
}



def llava_onevision_config(geometry: LlavaOnevisionGeometry | str):
    from transformers import LlavaOnevisionConfig  # on use: transformers takes seconds to load

    g = LLAVA_OV_GEOMETRIES[geometry] if isinstance(geometry, str) else geometry
    tiny_vocab = g.vocab_size <= TINY_VOCAB
    text = text_config(g, model_type="qwen2")
    if tiny_vocab:
        text.update(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": g.vision_hidden,
        "intermediate_size": g.vision_intermediate,
        "num_hidden_layers": g.vision_layers,
        "num_attention_heads": g.vision_heads,
        "image_size": g.image_size,
        "patch_size": g.patch_size,
        "vision_use_head": False,
    }
    image_token, video_token = (IMAGE_TOKEN, VIDEO_TOKEN) if tiny_vocab else (151646, 151647)
    return LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=image_token,
        video_token_id=video_token,
        image_grid_pinpoints=[[g.image_size, g.image_size]],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )


def build_llava_onevision(geometry: LlavaOnevisionGeometry | str, dtype=torch.float32, seed: int = 0, device="cpu"):
    """A random-weight LlavaOnevisionForConditionalGeneration in eval mode, initialised on
    `device` (a 7B model initialises in seconds on a GPU, minutes on a CPU)."""
    from transformers import LlavaOnevisionForConditionalGeneration  # on use: transformers takes seconds to load

    return random_model(LlavaOnevisionForConditionalGeneration, llava_onevision_config(geometry), dtype, seed, device)


def preset_processor(image_size: int):
    """A word-level tokenizer with a chat template and the frame preprocessing of a preset."""
    return VideoLLMProcessor(build_word_tokenizer(PRESET_WORDS), FramePreprocessing(image_size, image_size))


def _llava_preset(name: str):
    def build(dtype=torch.float32, seed: int = 0, device="cpu"):
        model = build_llava_onevision(name, dtype=dtype, seed=seed, device=device)
        return model, preset_processor(LLAVA_OV_GEOMETRIES[name].image_size)

    return build


# name -> builder(dtype, seed, device) returning (model, processor); random weights, real architectures.

PRESETS = {name: _llava_preset(name) for name in LLAVA_OV_GEOMETRIES}
