"""Turning frames and questions into model inputs, with or without a Hugging Face processor.

Hugging Face video processors need torchvision; CPU-only installs (and this project's CI) often
have none. `VideoLLMProcessor` holds what the engine needs — a tokenizer with a chat template and
a frame preprocessing — and is built from a checkpoint folder either way: `load_processor(path)`
returns the checkpoint's own `AutoProcessor` when it loads, else a `VideoLLMProcessor` reading the
same preprocessing settings from the checkpoint's `video_preprocessor_config.json` (or
`preprocessor_config.json`). Frame preprocessing repeats the processor's steps for the families
this project supports: resize (bicubic, antialiased), rescale to [0, 1], normalise, and for
Qwen2-VL / Qwen2.5-VL (`QwenVideoPreprocessing`) their size rule and flat patch layout.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")


@dataclass
class FramePreprocessing:
    """Resize + rescale + normalise, as LLaVA-OneVision's video processor does."""

    height: int = 384
    width: int = 384
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255

    def __call__(self, frames, dtype=torch.float32, device=None) -> torch.Tensor:
        """frames [F, H, W, 3] uint8 RGB (numpy or torch) -> pixel values [F, 3, height, width]."""
        video = as_frames(frames).to(device)
        x = _resize(video.permute(0, 3, 1, 2).float(), self.height, self.width)
        return _normalise(x, self.rescale_factor, self.mean, self.std).to(dtype)

    @classmethod
    def from_dict(cls, config: dict) -> FramePreprocessing:
        size = config.get("size") or {}
        if "height" in size:
            height, width = size["height"], size["width"]
        elif "shortest_edge" in size:
            height = width = size["shortest_edge"]
        else:
            height = width = cls.height
        return cls(
            height=int(height),
            width=int(width),
            mean=tuple(config.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(config.get("image_std", OPENAI_CLIP_STD)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
        )

    def to_dict(self) -> dict:
        return {
            "size": {"height": self.height, "width": self.width},
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "rescale_factor": self.rescale_factor,
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "resample": 3,  # PIL bicubic, what the processors record
        }


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[F, 3, H, W] float pixel values in 0..255 resized as the processors resize uint8 frames
    (bicubic, antialiased, rounded back to integers)."""
    if x.shape[-2:] == (height, width):
        return x
    x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return x.round().clamp(0, 255)


def _normalise(x: torch.Tensor, rescale_factor: float, mean, std) -> torch.Tensor:
    x = x * rescale_factor
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass
class QwenVideoPreprocessing:
    """Qwen2-VL / Qwen2.5-VL video preprocessing, as their video processor does it: resize every
    frame to `smart_resize` of its size (sides multiples of patch_size * merge_size, pixel count
    within [min_pixels, max_pixels]), rescale, normalise, repeat the last frame up to a multiple of
    temporal_patch_size, and cut the clip into the flat patch layout the vision encoder reads:
    pixel_values_videos (t*h*w, 3*temporal_patch_size*patch_size**2), rows slice-major and, within
    a slice, in merge_size x merge_size blocks; video_grid_thw [[t, h, w]] in patches."""

    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) frames of this size are resized to."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # on use: transformers takes seconds to load

        factor = self.patch_size * self.merge_size
        return smart_resize(height, width, factor=factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def __call__(self, frames, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [F, H, W, 3] uint8 RGB -> (pixel_values_videos [t*h*w, D], video_grid_thw [1, 3])."""
        video = as_frames(frames).to(device)
        height, width = self.size_for(video.shape[1], video.shape[2])
        x = _normalise(_resize(video.permute(0, 3, 1, 2).float(), height, width), self.rescale_factor, self.mean, self.std)
        pixels, grid = qwen_patchify(x, self.patch_size, self.merge_size, self.temporal_patch_size)
        return pixels.to(dtype), grid

    @classmethod
    def from_dict(cls, config: dict) -> QwenVideoPreprocessing:
        size = config.get("size") or {}
        return cls(
            min_pixels=int(config.get("min_pixels", size.get("shortest_edge", cls.min_pixels))),
            max_pixels=int(config.get("max_pixels", size.get("longest_edge", cls.max_pixels))),
            patch_size=int(config.get("patch_size", cls.patch_size)),
            merge_size=int(config.get("merge_size", cls.merge_size)),
            temporal_patch_size=int(config.get("temporal_patch_size", cls.temporal_patch_size)),
            mean=tuple(config.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(config.get("image_std", OPENAI_CLIP_STD)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
        )

    def to_dict(self) -> dict:
        return {
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "patch_size": self.patch_size,
            "merge_size": self.merge_size,
            "temporal_patch_size": self.temporal_patch_size,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "rescale_factor": self.rescale_factor,
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "resample": 3,
        }


def qwen_patchify(x: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames [F, C, H, W] (sides multiples of patch_size * merge_size) -> Qwen-VL's flat patch
    layout (t*h*w, C*temporal_patch_size*patch_size**2) and video_grid_thw [[t, h, w]]. An
    incomplete last slice repeats the last frame."""
    tp, p, m = temporal_patch_size, patch_size, merge_size
    if pad := -len(x) % tp:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
    channels, height, width = x.shape[1:]
    grid_t, grid_h, grid_w = len(x) // tp, height // p, width // p
    patches = x.reshape(grid_t, tp, channels, grid_h // m, m, p, grid_w // m, m, p)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, h-block, w-block, h, w | C, tp, p, p
    pixels = patches.reshape(grid_t * grid_h * grid_w, channels * tp * p * p)
    return pixels, torch.tensor([[grid_t, grid_h, grid_w]], device=x.device)


def as_frames(frames) -> torch.Tensor:
    """[F, H, W, 3] uint8 as a torch tensor; one frame [H, W, 3] becomes [1, H, W, 3]."""
    video = torch.as_tensor(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else torch.as_tensor(frames)
    if video.ndim == 3:
        video = video[None]
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3] (RGB), got shape {tuple(video.shape)}")
    if video.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 RGB, got {video.dtype}")
    return video


class VideoLLMProcessor:
    """A tokenizer (with chat template) plus the frame preprocessing of a checkpoint."""

    def __init__(self, tokenizer, frames: FramePreprocessing | QwenVideoPreprocessing):
        self.tokenizer = tokenizer
        self.frames = frames

    def save_pretrained(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        for name in PREPROCESSOR_FILES:
            (path / name).write_text(json.dumps(self.frames.to_dict(), indent=2) + "\n")


def read_frame_preprocessing(path: str | os.PathLike) -> FramePreprocessing | QwenVideoPreprocessing:
    """The checkpoint's frame preprocessing: Qwen-VL's (patch layout) when its config names a
    temporal patch size or merge size, else resize + normalise."""
    for name in PREPROCESSOR_FILES:
        file = Path(path) / name
        if file.exists():
            config = json.loads(file.read_text())
            if "temporal_patch_size" in config or "merge_size" in config:
                return QwenVideoPreprocessing.from_dict(config)
            return FramePreprocessing.from_dict(config)
    raise FileNotFoundError(f"no {' or '.join(PREPROCESSOR_FILES)} in {path}")


def load_processor(path: str | os.PathLike):
    """The checkpoint's AutoProcessor if it can be built here, else a VideoLLMProcessor."""
    from transformers import AutoProcessor, AutoTokenizer  # on use: transformers takes seconds to load

    try:
        return AutoProcessor.from_pretrained(path)
    except (ImportError, OSError, ValueError, TypeError, KeyError):
        return VideoLLMProcessor(AutoTokenizer.from_pretrained(path), read_frame_preprocessing(path))


def tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)
