"""Offline requests: frames sampled from a video file the way lmms-eval's built-in model of the
family samples them, and the `generate` inputs of [chat header][video tokens][question].

Sampling (lmms-eval 0.7.3):
- LLaVA-OneVision (`llava_onevision`): `max_frames_num` frames, `np.linspace(0, n - 1, k, dtype=int)`;
- Qwen families (`qwen2_5_vl_chat`, `qwen3_vl`): `nframes = min(max_num_frames, n)` floored to an even
  count (at least 2), indices `linspace(0, n - 1, nframes)` rounded (qwen_vl_utils' rule); with `fps`,
  `nframes = duration * fps` clamped to [2, max_num_frames] and floored to even, then the same.
The prompt is the engine's (`PromptTemplate`: the tokenizer's chat template split around the video),
so an offline answer and a streaming answer see the same text; frames are preprocessed by the
adapter (the checkpoint's Hugging Face video processor when it loads, else stc's own copy of its
steps, which needs no torchvision).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from stc.api import adapter_for
from stc.integrations.engine.session import PromptTemplate
from stc.integrations.video import VideoError, open_video

LLAVA_TYPES = ("llava_onevision",)


def frame_indices(model_type: str, total: int, source_fps: float, max_num_frames: int, fps: float | None) -> np.ndarray:
    """Indices of the frames an offline request samples from a video of `total` frames."""
    if model_type in LLAVA_TYPES and fps is None:
        return np.linspace(0, total - 1, max_num_frames, dtype=int)
    wanted = min(max_num_frames, total) if fps is None else min(max_num_frames, total / source_fps * fps)
    count = max(2, int(wanted) // 2 * 2)
    return np.linspace(0, total - 1, count).round().astype(int)


def load_frames(path: str, model_type: str, max_num_frames: int, fps: float | None) -> tuple[np.ndarray, list[float]]:
    """(uint8 frames [F, H, W, 3], their times in seconds) of a video file."""
    if not isinstance(path, str):
        raise VideoError(f"the stc lmms-eval models take video file paths; got a {type(path).__name__}")
    reader = open_video(path)
    source_fps = float(reader.get_avg_fps()) or 1.0
    index = frame_indices(model_type, len(reader), source_fps, max_num_frames, fps)
    frames = reader.get_batch(list(index)).asnumpy()
    return frames, [float(i) / source_fps for i in index]


def _sample_fps(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 1.0


def video_inputs(model, processor, frames: np.ndarray, times: list[float], question: str,
                 system_prompt: str | None) -> dict:
    """`model.generate` keyword arguments for one video and one question, laid out as the
    family's processor lays them out (LLaVA-OV: frames x pooled tokens + newline; Qwen2/2.5-VL:
    one vision span of t*h*w/merge^2 tokens; Qwen3-VL/3.5: per temporal slice a `<t seconds>`
    stamp and its own vision span)."""
    adapter = adapter_for(model)
    template = PromptTemplate(getattr(processor, "tokenizer", processor), adapter.video_placeholder, system_prompt)
    config = model.config
    video = config.video_token_id
    extra = {}
    if config.model_type in LLAVA_TYPES:
        pixels = adapter.preprocess(model, processor, frames)
        side = math.ceil(config.vision_config.image_size // config.vision_config.patch_size / 2)
        span = [video] * (len(frames) * side * side + 1)
        extra = {"pixel_values_videos": pixels}
    else:
        pixels, grid = adapter.preprocess(model, processor, frames)
        t, h, w = (int(x) for x in grid[0])
        per_slice = h * w // config.vision_config.spatial_merge_size ** 2
        if adapter.video_placeholder == "<|video_pad|>":  # Qwen2-VL / Qwen2.5-VL: one span
            span = [video] * (t * per_slice)
        else:  # Qwen3-VL / Qwen3.5: the template's placeholder is the whole per-slice span
            tp = config.vision_config.temporal_patch_size  # frames per slice; an odd last slice repeats its frame
            span = []
            for j in range(t):
                first, last = times[j * tp], times[min(j * tp + tp - 1, len(times) - 1)]
                span += template.ids(f"<{(first + last) / 2:.1f} seconds>")
                span += [config.vision_start_token_id] + [video] * per_slice + [config.vision_end_token_id]
        extra = {"pixel_values_videos": pixels, "video_grid_thw": grid.to(model.device)}
        if config.model_type == "qwen2_5_vl":
            temporal = config.vision_config.temporal_patch_size
            extra["second_per_grid_ts"] = torch.tensor([temporal / _sample_fps(times)], device=model.device)
    ids = torch.tensor([template.header_ids() + span + template.prompt_ids(question)], device=model.device)
    if config.model_type not in LLAVA_TYPES:
        extra["mm_token_type_ids"] = 2 * (ids == video).long()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **extra}
