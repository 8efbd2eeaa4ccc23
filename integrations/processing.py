"""Turning frames and questions into model inputs, with or without a Hugging Face processor.

Hugging Face video processors need torchvision; CPU-only installs (and this project's CI) often
have none. `VideoLLMProcessor` holds what the engine needs — a tokenizer with a chat template and
a frame preprocessing — and is built from a checkpoint folder either way: `load_processor(path)`
returns the checkpoint's own `AutoProcessor` when it loads, else a `VideoLLMProcessor` reading the
same preprocessing settings from the checkpoint's `video_preprocessor_config.json` (or
`preprocessor_config.json`). Frame preprocessing repeats the processor's steps for the families
this project supports: resize (bicubic, antialiased), rescale to [0, 1], normalise.
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
        x = video.permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.height, self.width):
            x = F.interpolate(x, size=(self.height, self.width), mode="bicubic", antialias=True, align_corners=False)
            x = x.round().clamp(0, 255)  # the processor resizes uint8 images
        x = x * self.rescale_factor
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(dtype)

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

    def __init__(self, tokenizer, frames: FramePreprocessing):
        self.tokenizer = tokenizer
        self.frames = frames

    def save_pretrained(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        for name in PREPROCESSOR_FILES:
            (path / name).write_text(json.dumps(self.frames.to_dict(), indent=2) + "\n")


def read_frame_preprocessing(path: str | os.PathLike) -> FramePreprocessing:
    for name in PREPROCESSOR_FILES:
        file = Path(path) / name
        if file.exists():
            return FramePreprocessing.from_dict(json.loads(file.read_text()))
    raise FileNotFoundError(f"no {' or '.join(PREPROCESSOR_FILES)} in {path}")


def load_processor(path: str | os.PathLike):
    """The checkpoint's AutoProcessor if it can be built here, else a VideoLLMProcessor."""
    from transformers import AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(path)
    except (ImportError, OSError, ValueError, TypeError, KeyError):
        return VideoLLMProcessor(AutoTokenizer.from_pretrained(path), read_frame_preprocessing(path))


def tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)
