"""Tiny models and inputs shared by the tests (built from configs; no hub access)."""

from __future__ import annotations

import torch

from stc.eval.presets import VIDEO_TOKEN, build_llava_onevision

LLAVA_TOKENS_PER_FRAME = 4  # 28 px / patch 7 -> 4x4 patches -> pooled 2x2


def tiny_llava(dtype=torch.float64, seed=0):
    return build_llava_onevision("llava-ov-tiny", dtype=dtype, seed=seed)


def llava_video_inputs(frames: int, batch: int = 1, dtype=torch.float64, seed: int = 0, smooth: bool = False):
    """pixel_values_videos [B, F, 3, 28, 28] and input_ids with F*4+1 video placeholders.

    `smooth` makes consecutive frames similar (a slowly moving pattern plus small noise), as in
    real video, so that the Cacher's reuse is meaningful.
    """
    g = torch.Generator().manual_seed(seed)
    if smooth:
        base = torch.randn(batch, 1, 3, 28, 28, generator=g, dtype=dtype)
        drift = torch.randn(batch, 1, 3, 28, 28, generator=g, dtype=dtype)
        steps = torch.arange(frames, dtype=dtype).view(1, frames, 1, 1, 1) / frames
        pixels = base + 0.3 * steps * drift + 0.05 * torch.randn(batch, frames, 3, 28, 28, generator=g, dtype=dtype)
    else:
        pixels = torch.randn(batch, frames, 3, 28, 28, generator=g, dtype=dtype)
    prompt = [1, 5, 6] + [VIDEO_TOKEN] * (frames * LLAVA_TOKENS_PER_FRAME + 1) + [7, 8, 9]
    input_ids = torch.tensor([prompt] * batch)
    return pixels, input_ids


TINY_WORDS = ["user", "assistant", "system", "\n", "what", "is", "in", "the", "video", "?", "colour", "red",
              "blue", "A", "B", "C", "D", ".", "answer", "now", "first", "how", "many"]


def tiny_processor(size: int = 28):
    from stc.eval.presets import build_word_tokenizer
    from stc.integrations.processing import FramePreprocessing, VideoLLMProcessor

    return VideoLLMProcessor(build_word_tokenizer(TINY_WORDS), FramePreprocessing(size, size))


def random_frames(count: int, size: int = 28, seed: int = 0):
    """uint8 RGB frames [count, size, size, 3] that change slowly, like a video."""
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3)).astype(np.int16)
    frames = [np.clip(base + rng.integers(-40, 41, (size, size, 3)), 0, 255) for _ in range(count)]
    return np.stack(frames).astype(np.uint8)


# -- Qwen2-VL / Qwen2.5-VL --------------------------------------------------------------------

QWEN_FAMILIES = {"qwen2_vl": "qwen2-vl-tiny", "qwen2_5_vl": "qwen2.5-vl-tiny"}
QWEN_PATCH, QWEN_MERGE, QWEN_TEMPORAL = 4, 2, 2  # tiny presets: 8-px merged tokens, 2 frames per slice


def tiny_qwen(family: str = "qwen2_5_vl", dtype=torch.float64, seed=0):
    from stc.eval.presets import build_qwen_vl

    return build_qwen_vl(QWEN_FAMILIES[family], dtype=dtype, seed=seed)


def qwen_video_inputs(frames: int, batch: int = 1, size: tuple[int, int] = (24, 24), dtype=torch.float64, seed: int = 0,
                      smooth: bool = False, prompt: tuple = (1, 5, 6), suffix: tuple = (7, 8, 9, 10, 11, 12, 13, 14)):
    """Model inputs for `batch` tiny videos of `frames` frames of `size` pixels (already
    normalised values), as Qwen's processor lays them out: pixel_values_videos flat
    (sum t*h*w, 3*2*4*4) with video_grid_thw (an odd frame count repeats the last frame, so
    t = ceil(frames / 2)), input_ids [prompt] <|vision_start|> <|video_pad|> x t*h*w/4
    <|vision_end|> [suffix], and mm_token_type_ids (2 on the video tokens).

    `smooth` makes consecutive frames similar (a slowly moving pattern plus small noise)."""
    from stc.eval.presets import VIDEO_TOKEN, VISION_END, VISION_START
    from stc.integrations.processing import qwen_patchify

    g = torch.Generator().manual_seed(seed)
    height, width = size
    if smooth:
        base = torch.randn(batch, 1, 3, height, width, generator=g, dtype=dtype)
        drift = torch.randn(batch, 1, 3, height, width, generator=g, dtype=dtype)
        steps = torch.arange(frames, dtype=dtype).view(1, frames, 1, 1, 1) / frames
        video = base + 0.3 * steps * drift + 0.05 * torch.randn(batch, frames, 3, height, width, generator=g, dtype=dtype)
    else:
        video = torch.randn(batch, frames, 3, height, width, generator=g, dtype=dtype)
    pixels, grids = zip(*(qwen_patchify(v, QWEN_PATCH, QWEN_MERGE, QWEN_TEMPORAL) for v in video))
    grid = torch.cat(grids)
    tokens = int(grid[0].prod()) // QWEN_MERGE**2
    row = [*prompt, VISION_START] + [VIDEO_TOKEN] * tokens + [VISION_END, *suffix]
    input_ids = torch.tensor([row] * batch)
    return {
        "pixel_values_videos": torch.cat(pixels),
        "video_grid_thw": grid,
        "input_ids": input_ids,
        "mm_token_type_ids": 2 * (input_ids == VIDEO_TOKEN).long(),
    }


def tiny_qwen_processor(max_side: int = 32):
    """A Qwen-style word tokenizer (video = <|vision_start|><|video_pad|><|vision_end|>) plus
    Qwen's video preprocessing at the tiny patch size (frames up to max_side**2 pixels)."""
    from stc.eval.presets import build_qwen_word_tokenizer
    from stc.integrations.processing import QwenVideoPreprocessing, VideoLLMProcessor

    frames = QwenVideoPreprocessing(min_pixels=8 * 8, max_pixels=max_side * max_side, patch_size=QWEN_PATCH)
    return VideoLLMProcessor(build_qwen_word_tokenizer(TINY_WORDS), frames)
