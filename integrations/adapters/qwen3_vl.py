"""STC adapter for Qwen3-VL and Qwen3.5 (`Qwen3VLForConditionalGeneration`,
`Qwen3_5ForConditionalGeneration` and their MoE variants, transformers 5.x).

Their vision encoders have the Qwen2-VL block layout (norm1, fused qkv, proj, norm2, mlp; full
attention inside each temporal slice of 2 frames), so the Cacher and the Pruner's gather are
`QwenVLAdapter`'s. What differs, and lives here:

- DeepStack (Qwen3-VL): the hidden states after the blocks in
  `vision_config.deepstack_visual_indexes`, each through its own merger, are added to the LLM's
  hidden states at the visual positions after the first decoder layers. The taps are computed by
  the model from the Cacher's block outputs, so they stay consistent with the cached blocks; the
  Pruner gathers every tap with the keep index of the merged tokens and hands them over in
  `mm_encoder_outputs["video"].deepstack_features`.
- Timestamps: Qwen3-VL's processor writes every temporal slice as
  `<{t:.1f} seconds><|vision_start|>` + its tokens + `<|vision_end|>` (t: the mean time of the
  slice's frames), and `get_rope_index` places each slice like a one-slice video: its tokens at
  t = p, h = p + row, w = p + column from the position p after the text before it, and text
  continues at p + max(rows, columns). Positions of a pruned prompt are computed on the unpruned
  sequence and gathered, as for Qwen2-VL.
- Streaming engine: each slice is one block holding that timestamp text, its kept tokens and
  `<|vision_end|>`; its layout is its tokens' positions relative to the block's start, so blocks
  re-positioned one after another are placed exactly as the model's own `get_rope_index` places
  them. DeepStack features reach the engine as the blocks' extra features (zero at text). Rope
  deltas never go through the model object: the engine positions every token itself.
- Qwen3.5: its language model mixes gated linear-attention layers with full-attention layers. In
  the engine the linear-attention layers carry their recurrent state through the whole stream
  (constant memory; restored after every question) while the full-attention layers keep the
  sink, window and retrievable blocks (see `DecoderDriver`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from stc.integrations.adapters.contract import ClipBlocks
from stc.integrations.adapters.patching import pooled
from stc.integrations.processing import QwenVideoPreprocessing
from stc.integrations.adapters.qwen_vl import ClipSlices, QwenVLAdapter, QwenVLLayout

QWEN3_LAYOUTS = {
    "qwen3_vl": QwenVLLayout("Qwen3-VL"),
    "qwen3_vl_moe": QwenVLLayout("Qwen3-VL-MoE"),
    "qwen3_5": QwenVLLayout("Qwen3.5"),
    "qwen3_5_moe": QwenVLLayout("Qwen3.5-MoE"),
}


class Qwen3VLAdapter(QwenVLAdapter):
    """One adapter for model_type "qwen3_vl", "qwen3_vl_moe", "qwen3_5" and "qwen3_5_moe"."""

    video_placeholder = "<|vision_start|><|video_pad|><|vision_end|>"  # each slice renders its own
    layouts = QWEN3_LAYOUTS
    normalisation = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    expected_layout = ("Qwen3VLForConditionalGeneration / Qwen3_5ForConditionalGeneration with model.visual.blocks, "
                       "model.language_model, get_video_features and get_rope_index")

    def check(self, model) -> None:
        super().check(model)
        self.deepstack = len(getattr(model.config.vision_config, "deepstack_visual_indexes", None) or ())

    def _text_after_video(self, inner, merge_size: int, video_token: int) -> str:
        return "spatial"  # every slice is its own video: text continues at max(rows, columns)

    # -- Pruner: DeepStack taps follow the keep index -------------------------------------------

    def extra_features(self, encoded, video: int, slices: int, tokens: int) -> Tensor | None:
        if not self.deepstack:
            return None
        return torch.stack([tap[video] for tap in encoded.deepstack_features]).view(self.deepstack, slices, tokens, -1)

    def encoder_output(self, kept: tuple[Tensor, ...], kept_extras: list[Tensor | None]):
        if not self.deepstack:
            return pooled(kept)
        taps = [tuple(extra[layer] for extra in kept_extras) for layer in range(self.deepstack)]
        return BaseModelOutputWithDeepstackFeatures(pooler_output=kept, deepstack_features=taps)

    # -- Streaming engine -------------------------------------------------------------------

    def preprocess(self, model, processor, frames):
        """As for Qwen2-VL, except with a Hugging Face video processor: Qwen3-VL's samples frames
        itself and sizes frames by the clip's length (a token budget per video), which would
        drop frames and change the frame size from chunk to chunk of a stream. The engine instead
        uses its settings (patch and merge sizes, normalisation, `size["shortest_edge"]` as the
        least pixels, `max_video_tokens` merged tokens per slice as the most) for every frame."""
        video_processor = getattr(processor, "video_processor", None)
        if video_processor is None:
            return super().preprocess(model, processor, frames)
        factor = video_processor.patch_size * video_processor.merge_size
        steps = QwenVideoPreprocessing(
            min_pixels=video_processor.size["shortest_edge"],
            max_pixels=video_processor.max_video_tokens * factor**2,
            patch_size=video_processor.patch_size,
            merge_size=video_processor.merge_size,
            temporal_patch_size=video_processor.temporal_patch_size,
            mean=tuple(video_processor.image_mean),
            std=tuple(video_processor.image_std),
        )
        pixels, grid = steps(frames)
        return pixels.to(model.device, model.dtype), grid.to(model.device)

    def set_sample_fps(self, fps: float) -> None:
        """Positions do not depend on the frame rate (time is in the timestamp text)."""

    def clip_blocks(self, model, clip: ClipSlices, times: list[float], text) -> ClipBlocks:
        """One block per temporal slice: `<t seconds><|vision_start|>`, the kept merged tokens,
        `<|vision_end|>`; layouts [3, L] are the block's positions relative to its start; DeepStack
        features, when the model has them, are the blocks' extras."""
        rows, cols, visual, positions, extras = clip.rows, clip.cols, clip.tokens, clip.positions, clip.extras
        config = model.config
        end = text.embed([config.vision_end_token_id])
        tokens, layouts, block_extras = [], [], []
        per_block = self.frames_per_block
        for j in range(len(visual)):
            slice_times = times[j * per_block : (j + 1) * per_block]
            prefix = text.ids(f"<{(slice_times[0] + slice_times[-1]) / 2:.1f} seconds>") + [config.vision_start_token_id]
            p = len(prefix)
            tokens.append(torch.cat([text.embed(prefix), visual[j].to(end.dtype), end]))
            grid_positions = torch.stack([torch.zeros_like(positions[j]), positions[j] // cols, positions[j] % cols]) + p
            layouts.append(torch.cat([torch.arange(p).expand(3, -1), grid_positions,
                                      torch.full((3, 1), p + max(rows, cols))], dim=1))
            if extras is not None:
                zeros = extras.new_zeros(self.deepstack, 1, extras.shape[-1])
                picked = extras[:, j, positions[j].to(extras.device)]
                block_extras.append(torch.cat([zeros.expand(-1, p, -1), picked, zeros], dim=1))
        return ClipBlocks(tokens, layouts, [len(v) for v in visual], clip.kept, block_extras if extras is not None else None)

    def visual_positions(self, start: int, layouts: list[Tensor]) -> tuple[Tensor, int]:
        """Blocks one after another from `start`: each block's relative positions shifted to where
        the previous one ends (its largest position + 1)."""
        parts, offset = [], start
        for layout in layouts:
            if layout.numel():
                parts.append(layout + offset)
                offset += int(layout.max()) + 1
        if not parts:
            return torch.zeros(3, 0, dtype=torch.long), 0
        return torch.cat(parts, dim=1), offset - start


__all__ = ["QWEN3_LAYOUTS", "Qwen3VLAdapter"]
