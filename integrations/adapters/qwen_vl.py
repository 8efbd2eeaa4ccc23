"""STC adapter for Qwen2-VL and Qwen2.5-VL (`Qwen2VLForConditionalGeneration`,
`Qwen2_5_VLForConditionalGeneration`, transformers 5.x).

The unit in time is the temporal slice: the Conv3d patch embedding folds `temporal_patch_size`
(= 2) consecutive frames into one slice of h*w patches, and every attention segment of the vision
encoder stays inside one slice. Everything STC counts or plans as a "frame" (the Cacher's
references, `stc.stats(model)["frames"]`, the Pruner's per-frame budget, the streaming engine's
blocks) is a temporal slice for these models. An odd frame count is padded by repeating the last
frame (as Qwen's processor does); for raw pixel input the slice count is `video_grid_thw[:, 0]`.

Where STC goes:
- Cacher (`qwen_vl_cacher`): every block of `model.model.visual` follows the Cacher's plan while
  the inner `model.model.get_video_features` runs; images pass through the original blocks.
- Pruner (or a peer selector): `model.generate` and `model.forward` get wrappers that, for calls
  with `pixel_values_videos` and `input_ids`, encode the video, keep the selected merged tokens of
  each temporal slice (round(n*keep_ratio) for the Pruner) and hand the kept features to the
  original method through `mm_encoder_outputs`, with the prompt and its mRoPE positions gathered
  by `qwen_vl_prompt.kept_prompt`. `generate` returns the caller's `input_ids` followed by the new
  tokens; `forward` returns outputs for the kept sequence (rows left-padded to the longest kept
  row; kept positions in `stc.api.state_of(model).call.keep_mask`).
- The family differences are data (`qwen_vl_layout`).

Peer methods: the post-encoder selectors (VidCom2, DyCoke, TimeChat-Online, EVS, uniform, random)
run per temporal slice; EVS reads each merged token's pixels (its 2x2 patches, both frames of the
slice). ToMe and VisionZip are LLaVA-OneVision only (`check_config` says why).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from stc.peers import FrameContext, MethodConfig
from stc.state import STCState

from stc.integrations.adapters.contract import ClipBlocks, VideoLLMAdapter
from stc.integrations.adapters.decoder import DecoderDriver
from stc.integrations.adapters.patching import (InstancePatch, install_prompt_pruning, pooled, sequence_keep, time_span,
                                                video_keep_mask, video_prefill)
from stc.integrations.adapters.qwen_vl_cacher import SliceLayout, install_cacher, qwen_block_ops, slice_layout
from stc.integrations.adapters.qwen_vl_layout import QWEN_VL_LAYOUTS, QwenVLFacts, QwenVLLayout, rope_continuation
from stc.integrations.adapters.qwen_vl_prompt import gather_frames, kept_prompt, slice_positions, text_positions
from stc.integrations.processing import FramePreprocessing, QwenVideoPreprocessing, as_frames


@dataclass
class ClipSlices:
    """A clip after the vision encoder and the selection: its merged-token grid (rows x cols),
    per temporal slice the kept tokens [k, D], the kept positions (None: nothing selected) and
    those positions on the CPU, and extra per-token features [layers, slices, rows*cols, D'] or None."""

    rows: int
    cols: int
    tokens: list[Tensor]
    kept: list[Tensor] | None
    positions: list[Tensor]
    extras: Tensor | None


# peer method -> why it does not run on Qwen-VL
QWEN_UNSUPPORTED = {
    "tome": "Qwen-VL's vision encoder attends within windows and its merger pools fixed 2x2 patch groups, "
            "so merging tokens inside it would need merging per window and un-merging before every merger",
    "visionzip": "its dominant tokens come from the attention patches receive in the vision encoder, which "
                 "this adapter measures for SigLIP only",
}


class QwenVLAdapter(VideoLLMAdapter):
    """One adapter for model_type "qwen2_vl" and "qwen2_5_vl"; the differences are data
    (`QWEN_VL_LAYOUTS`) and per-checkpoint facts read in `check` (`QwenVLFacts`)."""

    video_placeholder = "<|video_pad|>"  # Qwen's chat template renders <|vision_start|><|video_pad|><|vision_end|>
    layouts = QWEN_VL_LAYOUTS
    normalisation: dict = {}  # pixel mean/std when the processor has none (default: OpenAI CLIP's)
    expected_layout = ("Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration with model.visual.blocks, "
                       "model.language_model, get_video_features and get_rope_index")

    def __init__(self):
        self.names: QwenVLLayout | None = None
        self.facts: QwenVLFacts | None = None
        self.vision = None  # the vision encoder, set by install
        self.seconds_per_slice = 1.0  # what get_rope_index assumes without second_per_grid_ts

    @property
    def family(self) -> str:
        return self.names.family if self.names else "Qwen-VL"

    def check(self, model) -> None:
        """Validate the layout and read the per-checkpoint facts."""
        model_type = model.config.model_type
        names = self.layouts.get(model_type)
        inner = getattr(model, "model", None)
        vision = getattr(inner, names.vision, None) if names else None
        blocks = getattr(vision, names.blocks, None) if names else None
        if names is None or inner is None or blocks is None or not hasattr(inner, "get_rope_index") \
                or not hasattr(inner, "get_video_features") or getattr(inner, names.language_model, None) is None:
            raise TypeError(
                f"{type(model).__name__} has model_type {model_type!r} but not the layout STC expects "
                f"({self.expected_layout})"
            )
        self.names = names
        vision_config = model.config.vision_config
        self.facts = QwenVLFacts(
            video_token=model.config.video_token_id,
            image_token=model.config.image_token_id,
            merge_size=vision_config.spatial_merge_size,
            patch_size=vision_config.patch_size,
            temporal_patch_size=vision_config.temporal_patch_size,
            tokens_per_second=float(getattr(vision_config, "tokens_per_second", 1.0)) if names.timed_positions else 1.0,
            text_after_video=self._text_after_video(inner, vision_config.spatial_merge_size, model.config.video_token_id),
        )

    def _text_after_video(self, inner, merge_size: int, video_token: int) -> str:
        return rope_continuation(inner, merge_size, video_token)

    def check_config(self, model, config) -> None:
        """ToMe and VisionZip need SigLIP's layout: refuse them with the reason."""
        if isinstance(config, MethodConfig) and config.method in QWEN_UNSUPPORTED:
            raise ValueError(f"{config.method} is only available for LLaVA-OneVision: {QWEN_UNSUPPORTED[config.method]}")

    def _apply_rotary(self, model):
        return sys.modules[type(model.model).__module__].apply_rotary_pos_emb_vision

    def install(self, model, state: STCState) -> None:
        self.patcher = InstancePatch()
        names, facts = self.names, self.facts
        inner = model.model
        vision = self.vision = getattr(inner, names.vision)
        blocks = getattr(vision, names.blocks)
        install_cacher(self.patcher, blocks, names, state, self._apply_rotary(model))
        time_span(self.patcher, vision, blocks[-1], state.timer, "vit")
        time_span(self.patcher, getattr(vision, names.merger), getattr(vision, names.merger), state.timer, "projector")
        merge = facts.merge_size**2

        def make_video_features(original):
            def get_video_features(pixel_values_videos, video_grid_thw=None, **kwargs):
                if video_grid_thw is None:
                    return original(pixel_values_videos, video_grid_thw, **kwargs)
                grid = [tuple(int(v) for v in row) for row in video_grid_thw.tolist()]
                sizes = {(h, w) for _, h, w in grid}
                if state.cacher_active and len(sizes) > 1:
                    raise ValueError(
                        f"STC-Cacher needs all videos of one call to share a frame size; got grids {grid}. "
                        "Resize the videos to one size or encode them in separate calls"
                    )
                h, w = grid[0][1:]
                with state.video_pass([t for t, _, _ in grid], h * w, geometry=(h, w)):
                    with state.timer.section("encode"):
                        out = original(pixel_values_videos, video_grid_thw, **kwargs)
                visual = [t * hh * ww // merge for t, hh, ww in grid]  # per video
                state.count_llm_tokens(visual, visual)
                return out

            return get_video_features

        self.patcher.wrap_method(inner, "get_video_features", make_video_features)

        install_prompt_pruning(self.patcher, model, lambda kwargs: self.prune_inputs(model, state, kwargs))

    # -- Pruner -----------------------------------------------------------------------------

    def prune_inputs(self, model, state: STCState, kwargs: dict) -> dict | None:
        """kwargs for the original generate/forward with only the kept video tokens, or None
        when nothing is pruned (no video, no input_ids, or no selection step)."""
        prefill = video_prefill(kwargs, state.selects)
        if prefill is None:
            return None
        input_ids, pixels = prefill
        grid = kwargs.get("video_grid_thw")
        if grid is None:
            raise ValueError("pixel_values_videos needs video_grid_thw (as Qwen's processor returns it)")
        facts, inner = self.facts, model.model
        device = input_ids.device
        encoded_video = inner.get_video_features(pixels, grid, return_dict=True)
        per_slice, extras = [], []  # [t, n, D] and [layers, t, n, D'] per video
        for v, (t, h, w) in enumerate(grid.tolist()):
            n = (h // facts.merge_size) * (w // facts.merge_size)
            per_slice.append(encoded_video.pooler_output[v].view(t, n, -1))
            extras.append(self.extra_features(encoded_video, v, t, n))
        selections = state.select_streams(per_slice, self.selection_contexts(state, pixels, grid))
        kept = tuple(torch.cat(s.tokens) for s in selections)
        kept_extras = [None if e is None else gather_frames(e, s.positions) for e, s in zip(extras, selections)]

        is_video = input_ids == facts.video_token
        expected = sum(t.shape[0] * t.shape[1] for t in per_slice)
        found = int(is_video.sum())
        if found != expected:
            raise ValueError(
                f"input_ids must hold {expected} video tokens for video_grid_thw {grid.tolist()} "
                f"(temporal slices x merged tokens per slice); found {found}"
            )
        seq_keep = sequence_keep(is_video, video_keep_mask(selections, [t.shape[1] for t in per_slice], device))
        state.call.keep_mask = seq_keep

        out = kept_prompt(inner, kwargs, facts, is_video, seq_keep, model.config.text_config.pad_token_id)
        encoded = dict(kwargs.get("mm_encoder_outputs") or {})
        encoded["video"] = self.encoder_output(kept, kept_extras)
        if kwargs.get("pixel_values") is not None:  # images stay whole: encode them alongside
            encoded["image"] = inner.get_image_features(kwargs["pixel_values"], kwargs.get("image_grid_thw"), return_dict=True)
            out.pop("pixel_values")
            out.pop("image_grid_thw", None)
        out["mm_encoder_outputs"] = encoded
        return out

    def extra_features(self, encoded, video: int, slices: int, tokens: int) -> Tensor | None:
        """Per-token features of `video` that must follow the keep index, [layers, slices, tokens, D']
        (none for Qwen2-VL / Qwen2.5-VL)."""
        return None

    def encoder_output(self, kept: tuple[Tensor, ...], kept_extras: list[Tensor | None]):
        """The kept features in the form `mm_encoder_outputs["video"]` takes."""
        return pooled(kept)

    # -- Streaming engine -------------------------------------------------------------------

    @property
    def frames_per_block(self) -> int:
        """Frames per engine block: one temporal slice."""
        return self.facts.temporal_patch_size

    def set_sample_fps(self, fps: float) -> None:
        """Frames arrive `fps` per second: a slice spans temporal_patch_size / fps seconds, which
        sets Qwen2.5-VL's temporal mRoPE step (tokens_per_second * seconds per slice), as Qwen's
        processor does with second_per_grid_ts."""
        self.seconds_per_slice = self.facts.temporal_patch_size / float(fps)

    @property
    def time_interval(self) -> float:
        """Temporal mRoPE step between consecutive slices (get_rope_index's time_interval)."""
        return self.facts.tokens_per_second * self.seconds_per_slice if self.names.timed_positions else 1.0

    def vision_output_module(self, model):
        """The module whose input is the vision blocks' output (for fidelity measurements)."""
        return getattr(getattr(model.model, self.names.vision), self.names.merger)

    def decoder_driver(self, model) -> DecoderDriver:
        return DecoderDriver(getattr(model.model, self.names.language_model), model.lm_head)

    def preprocess(self, model, processor, frames) -> tuple[Tensor, Tensor]:
        """uint8 frames [F, H, W, 3] -> (pixel_values_videos [t*h*w, D], video_grid_thw [1, 3]) on
        the model; an odd frame count repeats the last frame."""
        video_processor = getattr(processor, "video_processor", None)
        if video_processor is not None:
            out = video_processor(videos=[as_frames(frames).numpy()], return_tensors="pt")
            pixels, grid = out["pixel_values_videos"], out["video_grid_thw"]
        else:
            steps = getattr(processor, "frames", None)
            if not isinstance(steps, QwenVideoPreprocessing):
                vc = model.config.vision_config
                extra = {"mean": steps.mean, "std": steps.std} if isinstance(steps, FramePreprocessing) else {}
                extra = {**self.normalisation, **extra}
                steps = QwenVideoPreprocessing(
                    patch_size=vc.patch_size, merge_size=vc.spatial_merge_size, temporal_patch_size=vc.temporal_patch_size, **extra
                )
            pixels, grid = steps(frames)
        return pixels.to(model.device, model.dtype), grid.to(model.device)

    def encode_clip(self, model, state: STCState, pixels) -> ClipSlices:
        """One clip (pixel_values_videos, video_grid_thw) of the current stream through the vision
        encoder (the Cacher runs inside it) and the selection (the Pruner keeps k of n merged
        tokens per slice)."""
        return self.encode_clips(model, state, [pixels])[0]

    def encode_clips(self, model, state: STCState, pixels: list) -> list[ClipSlices]:
        """`encode_clip` for several streams at once (entry s: one video of stream s of `state`,
        all with one grid): their flat patches and grids concatenated into one call of several
        videos (each its own Cacher stream), and one selection over them (each its own history)."""
        grids = [grid.tolist() for _, grid in pixels]
        if any(len(grid) != 1 for grid in grids) or any(grid != grids[0] for grid in grids):
            raise ValueError(f"each stream's clip is one video, all with one grid; got video_grid_thw {grids}")
        pixel_values, grid = (torch.cat(parts) for parts in zip(*pixels))
        encoded = model.model.get_video_features(pixel_values, grid, return_dict=True)
        slices, h, w = grids[0][0]
        rows, cols = h // self.facts.merge_size, w // self.facts.merge_size
        features = [encoded.pooler_output[v].view(slices, rows * cols, -1) for v in range(len(pixels))]
        extras = [self.extra_features(encoded, v, slices, rows * cols) for v in range(len(pixels))]
        if not state.selects:
            return [ClipSlices(rows, cols, list(f), None, [torch.arange(rows * cols)] * slices, e)
                    for f, e in zip(features, extras)]
        selections = state.select_streams(features, self.selection_contexts(state, pixel_values, grid))
        return [ClipSlices(rows, cols, s.tokens, s.positions, [p.cpu() for p in s.positions], e)
                for s, e in zip(selections, extras)]

    batches_streams = True

    def stream_blocks(self, model, state: STCState, pixels, times: list[float], text) -> ClipBlocks:
        """One block per temporal slice (`clip_blocks`)."""
        return self.stream_blocks_batch(model, state, [pixels], [times], [text])[0]

    def stream_blocks_batch(self, model, state: STCState, pixels: list, times: list[list[float]],
                            texts: list) -> list[ClipBlocks]:
        """`stream_blocks` for several streams: one vision-encoder call (`encode_clips`), then
        each stream's blocks."""
        clips = self.encode_clips(model, state, pixels)
        return [self.clip_blocks(model, clip, t, text) for clip, t, text in zip(clips, times, texts)]

    def clip_blocks(self, model, clip: ClipSlices, times: list[float], text) -> ClipBlocks:
        """One block per temporal slice; layouts: [2, k] (h, w) grid coordinates of the kept
        merged tokens."""
        layouts = [torch.stack([row // clip.cols, row % clip.cols]) for row in clip.positions]
        return ClipBlocks(clip.tokens, layouts, [len(x) for x in clip.tokens], clip.kept)

    def selection_contexts(self, state: STCState, pixels: Tensor, grid: Tensor) -> list[FrameContext] | None:
        """Per video of pixel_values_videos (flat patches, grid [videos, 3]), what the selector
        reads besides the tokens: each merged token's pixels [t, n, merge^2 * patch pixels] (EVS;
        the processor lays a merged token's patches out consecutively) and the share of vision
        blocks in which the Cacher recomputed its patches [t, n] (STC-Pruner's cacher_change;
        NaN rows: reference slices). Charged to the "selection" stage."""
        needs = state.context_needs
        if not needs:
            return None
        shapes = grid.tolist()
        merge = self.facts.merge_size**2
        cells = shares = [None] * len(shapes)
        with state.timer.section("selection"):
            if "pixels" in needs:
                cells = [video.reshape(t, h * w // merge, -1)
                         for video, (t, h, w) in zip(pixels.split([t * h * w for t, h, w in shapes]), shapes)]
            if "recomputed" in needs:  # the Cacher runs only on videos of one size
                share = self.merged_recompute_share(state.call.recompute_share, shapes[0][1:])
                shares = list(share.split([t for t, _, _ in shapes]))
        return [FrameContext(pixels=c, recomputed=r) for c, r in zip(cells, shares)]

    def merged_recompute_share(self, share: Tensor, size: tuple[int, int]) -> Tensor:
        """The Cacher's per-patch share [slices, h*w], in the vision blocks' row order, as a share
        per merged token [slices, n] in the merged tokens' own order: a merged token's patches are
        consecutive rows, and Qwen2.5-VL's blocks see the merged tokens in window order."""
        per_token = share.view(share.shape[0], -1, self.facts.merge_size**2).mean(-1)
        if not self.names.window_attention:
            return per_token
        vision = self.vision
        window_index, _ = sys.modules[type(vision).__module__].get_vision_window_index(
            torch.tensor([[1, *size]]), spatial_merge_size=self.facts.merge_size, window_size=vision.window_size,
            patch_size=vision.patch_size)
        restored = torch.empty_like(per_token)
        restored[:, window_index.to(share.device)] = per_token  # row block q is merged token window_index[q]
        return restored

    # Positions: three mRoPE rows (temporal, height, width).
    def text_positions(self, start: int, count: int) -> Tensor:
        return text_positions(start, count)

    def visual_positions(self, start: int, layouts: list[Tensor]) -> tuple[Tensor, int]:
        """The kept slices placed as get_rope_index places a video at `start` (`slice_positions`)."""
        return slice_positions(start, layouts, self.time_interval, self.facts.text_after_video)


__all__ = ["QWEN_VL_LAYOUTS", "QwenVLAdapter", "QwenVLFacts", "QwenVLLayout", "SliceLayout", "gather_frames", "qwen_block_ops",
           "slice_layout"]
