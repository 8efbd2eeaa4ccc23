"""Tiny models and inputs shared by the tests (built from configs; no hub access)."""

from __future__ import annotations

import torch

from stc.integrations.presets import VIDEO_TOKEN, build_llava_onevision

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
    from stc.integrations.presets import build_word_tokenizer
    from stc.integrations.processing import FramePreprocessing, VideoLLMProcessor

    return VideoLLMProcessor(build_word_tokenizer(TINY_WORDS), FramePreprocessing(size, size))


def random_frames(count: int, size: int = 28, seed: int = 0):
    """uint8 RGB frames [count, size, size, 3] that change slowly, like a video."""
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3)).astype(np.int16)
    frames = [np.clip(base + rng.integers(-40, 41, (size, size, 3)), 0, 255) for _ in range(count)]
    return np.stack(frames).astype(np.uint8)
