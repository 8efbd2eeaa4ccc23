"""What differs between the Qwen-VL families, as data (`QwenVLLayout`, one per model_type), and
the per-checkpoint facts an adapter reads from a model's config and its own get_rope_index
(`QwenVLFacts`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QwenVLLayout:
    """What differs between the Qwen-VL families, as data (transformers 5.x attribute names)."""

    family: str
    vision: str = "visual"  # model.model.<vision>: the vision transformer
    blocks: str = "blocks"  # its blocks
    merger: str = "merger"  # 2x2 patch merger (the projector)
    language_model: str = "language_model"  # model.model.<language_model>
    norm1: str = "norm1"
    norm2: str = "norm2"
    attn: str = "attn"
    qkv: str = "qkv"  # fused projection; its output holds `qkv_order` parts, each as wide as the block
    qkv_order: str = "qkv"  # heads contiguous inside each part (reshape(L, 3, heads, head_dim))
    proj: str = "proj"
    mlp: str = "mlp"
    # Window attention outside vision_config.fullatt_block_indexes, rows in window order. Descriptive:
    # the Cacher reads every block's attention segments from the cu_seqlens the block receives.
    window_attention: bool = False
    timed_positions: bool = False  # temporal mRoPE step = tokens_per_second * seconds per slice (else 1)


QWEN_VL_LAYOUTS = {
    "qwen2_vl": QwenVLLayout("Qwen2-VL"),
    "qwen2_5_vl": QwenVLLayout("Qwen2.5-VL", window_attention=True, timed_positions=True),
}


@dataclass(frozen=True)
class QwenVLFacts:
    """Per-checkpoint facts read from the model's config (and its own get_rope_index)."""

    video_token: int
    image_token: int
    merge_size: int
    patch_size: int
    temporal_patch_size: int
    tokens_per_second: float
    text_after_video: str  # how get_rope_index continues text after a video: "spatial" or "all"


def rope_continuation(inner, merge_size: int, video_token: int) -> str:
    """How the model's own get_rope_index places the text that follows a video: at
    start + max(H', W') ("spatial", transformers 5.x) or at max(all video positions) + 1 ("all",
    the original Qwen code). Probed once on a 3-slice 1x1 video."""
    ids = torch.tensor([[video_token] * 3 + [0]])
    kinds = torch.tensor([[2, 2, 2, 0]])
    grid = torch.tensor([[3, merge_size, merge_size]])
    with torch.no_grad():
        positions, _ = inner.get_rope_index(ids, kinds, video_grid_thw=grid, second_per_grid_ts=torch.tensor([1.0]))
    text, last_t = int(positions[0, 0, 3]), int(positions[0, 0, 2])
    return "all" if text == last_t + 1 else "spatial"


__all__ = ["QWEN_VL_LAYOUTS", "QwenVLFacts", "QwenVLLayout", "rope_continuation"]
