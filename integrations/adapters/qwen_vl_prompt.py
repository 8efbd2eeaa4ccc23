"""Qwen-VL's prompt after the Pruner, and its mRoPE positions (three rows: temporal, height, width).

For a `generate` / `forward` call, the model's own `get_rope_index` places the UNPRUNED sequence;
`kept_prompt` gathers those positions (and the attention mask, `mm_token_type_ids`, `input_ids`)
with the keep index, and returns the 4-row position ids generate uses (row 0: contiguous text
positions of the kept sequence, rows 1-3: the gathered mRoPE rows). `model.model.rope_deltas` is
set to the unpruned deltas plus the number of dropped tokens of each row, so a decode step that
derives positions from the cache length continues where the unpruned sequence would.

For the streaming engine, `slice_positions` places kept stream blocks as get_rope_index would
place a video that starts at a given position.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stc.integrations.adapters.patching import KeptSequence, mask_positions
from stc.integrations.adapters.qwen_vl_layout import QwenVLFacts

# The video inputs the kept prompt no longer carries: its video features come precomputed.
VIDEO_INPUTS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def gather_frames(features: Tensor, positions: list[Tensor]) -> Tensor:
    """[layers, F, n, D] features -> [layers, sum k_f, D]: frame f's `positions[f]`, frames in order."""
    return torch.cat([features[:, f, p.to(features.device)] for f, p in enumerate(positions)], dim=1)


def kept_prompt(inner, kwargs: dict, facts: QwenVLFacts, is_video: Tensor, seq_keep: Tensor, pad_id: int | None) -> dict:
    """`kwargs` without the video inputs, every sequence-indexed tensor gathered with `seq_keep`
    (rows with fewer kept tokens left-padded) and mRoPE positions of the unpruned sequence;
    sets `inner.rope_deltas` when it computes the positions itself."""
    input_ids = kwargs["input_ids"]
    device = input_ids.device
    attention_mask = kwargs.get("attention_mask")
    kinds = kwargs.get("mm_token_type_ids")
    if kinds is None:  # what Qwen's processor returns: 1 image, 2 video, 0 text
        kinds = 2 * is_video.long() + (input_ids == facts.image_token).long()
    position_ids = kwargs.get("position_ids")
    deltas = None
    if position_ids is None:
        position_ids, deltas = inner.get_rope_index(
            input_ids,
            kinds,
            image_grid_thw=kwargs.get("image_grid_thw"),
            video_grid_thw=kwargs["video_grid_thw"],
            second_per_grid_ts=kwargs.get("second_per_grid_ts"),
            attention_mask=attention_mask,
        )
    elif position_ids.ndim == 3 and position_ids.shape[0] == 4:
        position_ids = position_ids[1:]
    elif position_ids.ndim == 2:
        position_ids = position_ids[None].expand(3, -1, -1)

    sequence = KeptSequence(seq_keep)
    out = {k: v for k, v in kwargs.items() if k not in VIDEO_INPUTS}
    out["input_ids"] = sequence.gather(input_ids, 0 if pad_id is None else pad_id)
    if attention_mask is not None or sequence.padded:
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        attention_mask = sequence.gather(mask, 0)
        out["attention_mask"] = attention_mask
    out["mm_token_type_ids"] = sequence.gather(kinds, 0)
    text = mask_positions(attention_mask, input_ids.shape[0], sequence.length, device)
    out["position_ids"] = torch.cat([text[None], sequence.gather(position_ids.to(device), 0)], dim=0)
    if deltas is not None:  # decoding from the cache length continues at the unpruned positions
        dropped = (~seq_keep).sum(1, keepdim=True)
        inner.rope_deltas = deltas.to(device) + dropped
    return out


def text_positions(start: int, count: int) -> Tensor:
    """`count` text tokens from `start`: the same position in all three rows."""
    return torch.arange(start, start + count).view(1, -1).expand(3, -1)


def slice_positions(start: int, layouts: list[Tensor], time_interval: float, text_after_video: str) -> tuple[Tensor, int]:
    """Slice j of `layouts` at t = start + floor(j * time_interval), h = start + row,
    w = start + column (as get_rope_index places a video that starts at `start`). The extent
    is where get_rope_index continues text after such a video: max(H', W') (transformers 5.x,
    "spatial") or max(t_last + 1, H', W') (the original Qwen rule, "all"), with H', W' the largest
    kept row and column + 1 (the grid size when nothing is pruned)."""
    if not layouts:
        return torch.zeros(3, 0, dtype=torch.long), 0
    steps = (torch.arange(len(layouts)) * time_interval).long()
    counts = torch.tensor([layout.shape[1] for layout in layouts])
    temporal = torch.repeat_interleave(steps, counts)
    spatial = torch.cat(list(layouts), dim=1)
    positions = torch.cat([temporal[None], spatial]) + start
    extent = int(spatial.max()) + 1 if spatial.numel() else 0
    if text_after_video == "all":
        extent = max(extent, int(steps[-1]) + 1)
    return positions, extent


__all__ = ["VIDEO_INPUTS", "gather_frames", "kept_prompt", "slice_positions", "text_positions"]
