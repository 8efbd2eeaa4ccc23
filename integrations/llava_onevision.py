"""STC adapter for LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`, transformers 5.x).

Where STC goes:
- Cacher: every SigLIP encoder layer of `model.model.vision_tower` gets a per-instance forward
  that follows the Cacher's plan while `model.model.get_video_features` runs (images pass through
  the original layers untouched).
- Pruner: `model.generate` and `model.forward` get wrappers that, for calls with
  `pixel_values_videos` and `input_ids`, encode the video, keep round(n·keep_ratio) tokens per
  frame, drop the placeholders of the other tokens and hand the kept features to the original
  method through `mm_encoder_outputs`, with the position ids of the unpruned sequence gathered
  (RoPE sees the original positions). `generate` returns the caller's full `input_ids` followed by
  the new tokens, as without STC; `forward` returns outputs for the kept sequence only (the kept
  positions are in `stc.api.state_of(model).last_keep_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.cacher import BlockOps, run_block
from stc.pruner import gather_tokens
from stc.state import STCState

from .base import BlockRecorder, InstancePatch, install_prompt_pruning, pooled, time_module
from .decoder import DecoderDriver
from .processing import as_frames


@dataclass(frozen=True)
class SiglipLayout:
    """Attribute names of a SigLIP encoder layer (transformers 5.x)."""

    norm1: str = "layer_norm1"
    attn: str = "self_attn"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    out: str = "out_proj"
    norm2: str = "layer_norm2"
    mlp: str = "mlp"


SIGLIP = SiglipLayout()


def siglip_block_ops(layer, recorder: BlockRecorder, dense_call) -> BlockOps:
    """BlockOps of one SigLIP encoder layer; `dense_call(x)` runs the layer's original forward."""
    attn = getattr(layer, SIGLIP.attn)
    q_proj, k_proj, v_proj, out_proj = (getattr(attn, n) for n in (SIGLIP.q, SIGLIP.k, SIGLIP.v, SIGLIP.out))
    heads, head_dim = attn.num_heads, attn.head_dim

    def attend(q: Tensor, k: Tensor, v: Tensor, index: Tensor) -> Tensor:
        frames, queries, width = q.shape
        tokens = k.shape[1]
        qh = q.view(frames, queries, heads, head_dim).transpose(1, 2)
        kh = k.view(frames, tokens, heads, head_dim).transpose(1, 2)
        vh = v.view(frames, tokens, heads, head_dim).transpose(1, 2)
        o = F.scaled_dot_product_attention(qh, kh, vh, scale=attn.scale)
        return out_proj(o.transpose(1, 2).reshape(frames, queries, width))

    return BlockOps(
        dense=lambda x: recorder.capture(lambda: dense_call(x)),
        norm1=getattr(layer, SIGLIP.norm1),
        key=k_proj,
        query=lambda h, index: q_proj(h),
        value=lambda h, index: v_proj(h),
        attend=attend,
        norm2=getattr(layer, SIGLIP.norm2),
        mlp=getattr(layer, SIGLIP.mlp),
    )


def _install_siglip_cacher(patcher: InstancePatch, layers, state: STCState) -> None:
    for layer_idx, layer in enumerate(layers):
        recorder = BlockRecorder()
        attn = getattr(layer, SIGLIP.attn)
        patcher.hook(getattr(attn, SIGLIP.k), recorder.hook_for("keys"))
        patcher.hook(getattr(attn, SIGLIP.v), recorder.hook_for("values"))
        patcher.hook(attn, recorder.hook_for("attn_out", lambda out: out[0]))
        patcher.hook(getattr(layer, SIGLIP.mlp), recorder.hook_for("mlp_out"))

        def make(original, layer=layer, layer_idx=layer_idx, recorder=recorder):
            def forward(hidden_states, attention_mask=None, **kwargs):
                plan = state.plan
                if plan is None:
                    return original(hidden_states, attention_mask, **kwargs)
                if attention_mask is not None:
                    raise NotImplementedError("STC-Cacher expects SigLIP without an attention mask")
                ops = siglip_block_ops(layer, recorder, lambda x: original(x, None, **kwargs))
                out, index = run_block(layer_idx, hidden_states, plan, ops)
                state.last_recomputed[layer_idx] = index
                return out

            return forward

        patcher.wrap_method(layer, "forward", make)


class LlavaOnevisionAdapter:
    family = "LLaVA-OneVision"

    def check(self, model) -> None:
        inner = getattr(model, "model", None)
        tower = getattr(inner, "vision_tower", None)
        layers = getattr(getattr(tower, "encoder", None), "layers", None)
        if inner is None or layers is None or not hasattr(inner, "get_video_features"):
            raise TypeError(
                f"{type(model).__name__} has model_type 'llava_onevision' but not the layout STC expects "
                "(LlavaOnevisionForConditionalGeneration with model.vision_tower.encoder.layers)"
            )
        if getattr(model.config.vision_config, "model_type", None) != "siglip_vision_model":
            raise TypeError(
                "STC-Cacher supports LLaVA-OneVision with a SigLIP vision tower, "
                f"got {model.config.vision_config.model_type!r}"
            )

    def install(self, model, state: STCState) -> None:
        self.patcher = InstancePatch()
        inner = model.model
        _install_siglip_cacher(self.patcher, inner.vision_tower.encoder.layers, state)
        time_module(self.patcher, inner.vision_tower, state.timer, "vit")
        time_module(self.patcher, inner.multi_modal_projector, state.timer, "projector")
        patch_size = model.config.vision_config.patch_size

        def make_video_features(original):
            def get_video_features(pixel_values_videos, *args, **kwargs):
                batch, frames, _, height, width = pixel_values_videos.shape
                tokens = (height // patch_size) * (width // patch_size)
                with state.video_pass([frames] * batch, tokens, geometry=(height, width)):
                    with state.timer.section("encode"):
                        out = original(pixel_values_videos, *args, **kwargs)
                features = out.pooler_output if hasattr(out, "pooler_output") else out[1]
                visual = batch * (features.shape[1] - 1)  # one image_newline per video
                state.count_llm_tokens(visual, visual)
                return out

            return get_video_features

        self.patcher.wrap_method(inner, "get_video_features", make_video_features)

        install_prompt_pruning(self.patcher, model, lambda kwargs: self.prune_inputs(model, state, kwargs))

    def uninstall(self, model) -> None:
        self.patcher.restore()

    # -- Streaming engine ----------------------------------------------------------------------

    video_placeholder = "<video>"

    def decoder_driver(self, model) -> DecoderDriver:
        return DecoderDriver(model.model.language_model, model.lm_head)

    def preprocess(self, model, processor, frames) -> Tensor:
        """uint8 frames [F, H, W, 3] -> pixel_values_videos [1, F, 3, S, S] on the model."""
        video_processor = getattr(processor, "video_processor", None)
        if video_processor is not None:
            pixels = video_processor(videos=[as_frames(frames).numpy()], return_tensors="pt")["pixel_values_videos"]
        else:
            pixels = processor.frames(frames)[None]
        return pixels.to(model.device, model.dtype)

    def stream_tokens(self, model, state: STCState, pixels: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Visual tokens the LLM ingests for frames [1, F, ...] of the current stream, one
        [k, D] tensor per frame, and their position layouts: the Cacher runs inside the vision
        tower, the Pruner keeps k of n tokens per frame, and LLaVA-OneVision's trailing newline
        embedding is left out (as ReKV does)."""
        features = model.model.get_video_features(pixels, return_dict=True).pooler_output
        frames = pixels.shape[1]
        tokens = features[0, :-1].reshape(frames, -1, features.shape[-1])
        if state.config.prunes:
            keep = state.prune(tokens[None])[0]
            state.count_llm_tokens(0, -frames * (tokens.shape[1] - keep.shape[1]))
            tokens = gather_tokens(tokens, keep)
        return list(tokens), [tokens.new_empty(0, tokens.shape[1], dtype=torch.long)] * frames

    # Positions: plain RoPE, one row; frames are consecutive tokens (layouts carry no data).
    def text_positions(self, start: int, count: int) -> Tensor:
        return torch.arange(start, start + count).view(1, -1)

    def visual_positions(self, start: int, layouts: list[Tensor]) -> tuple[Tensor, int]:
        count = sum(layout.shape[1] for layout in layouts)
        return torch.arange(start, start + count).view(1, -1), count

    # -- Pruner -----------------------------------------------------------------------------

    def prune_inputs(self, model, state: STCState, kwargs: dict) -> dict | None:
        """kwargs for the original generate/forward with only the kept video tokens, or None
        when nothing is pruned (no video, no input_ids, or the Pruner is off)."""
        input_ids = kwargs.get("input_ids")
        pixels = kwargs.get("pixel_values_videos")
        if pixels is None or input_ids is None or not state.config.prunes:
            return None
        past = kwargs.get("past_key_values")
        if past is not None and past.get_seq_length() > 0:
            raise ValueError(
                "STC-Pruner prunes a video prefill, not a continuation of an existing cache; "
                "use stc.integrations.StreamingSession for streaming over a cache"
            )
        out = dict(kwargs)
        out.pop("pixel_values_videos")
        features = model.model.get_video_features(
            pixels,
            vision_feature_layer=kwargs.get("vision_feature_layer"),
            vision_feature_select_strategy=kwargs.get("vision_feature_select_strategy"),
            return_dict=True,
        ).pooler_output
        batch, frames = pixels.shape[:2]
        per_frame = (features.shape[1] - 1) // frames
        frame_tokens = features[:, : frames * per_frame].reshape(batch, frames, per_frame, -1)
        keep = state.prune(frame_tokens)  # [B, F, k]
        kept = gather_tokens(frame_tokens.flatten(0, 1), keep.flatten(0, 1)).reshape(batch, -1, features.shape[-1])
        kept = torch.cat([kept, features[:, frames * per_frame :]], dim=1)
        state.count_llm_tokens(0, -batch * frames * (per_frame - keep.shape[-1]))

        is_video = input_ids == model.config.video_token_id
        expected = frames * per_frame + 1
        found = is_video.sum(dim=1)
        if not bool((found == expected).all()):
            raise ValueError(
                f"each row of input_ids must hold {expected} video tokens ({frames} frames x {per_frame} + 1 "
                f"newline) for pixel_values_videos of shape {tuple(pixels.shape)}; found {found.tolist()}"
            )
        keep_video = torch.zeros(batch, frames, per_frame, dtype=torch.bool, device=input_ids.device)
        keep_video.scatter_(2, keep.to(input_ids.device), True)
        keep_video = torch.cat([keep_video.flatten(1), keep_video.new_ones(batch, 1)], dim=1)
        seq_keep = ~is_video
        seq_keep[is_video] = keep_video.flatten()
        state.last_keep_mask = seq_keep

        position_ids = kwargs.get("position_ids")
        attention_mask = kwargs.get("attention_mask")
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
            else:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand(batch, -1)
        length = int(seq_keep[0].sum())
        out["input_ids"] = input_ids[seq_keep].view(batch, length)
        out["position_ids"] = position_ids[seq_keep].view(batch, length)
        if attention_mask is not None:
            out["attention_mask"] = attention_mask[seq_keep].view(batch, length)
        out["mm_encoder_outputs"] = {**(kwargs.get("mm_encoder_outputs") or {}), "video": pooled(kept)}
        return out
