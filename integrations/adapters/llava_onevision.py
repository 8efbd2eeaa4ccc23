"""STC adapter for LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`, transformers 5.x).

Where STC goes:
- Cacher: every SigLIP encoder layer of `model.model.vision_tower` gets a per-instance forward
  that follows the Cacher's plan while `model.model.get_video_features` runs (images pass through
  the original layers untouched). With the peer method ToMe, the same forwards run ToMe's layer
  instead (`tome_siglip_layer`); for VisionZip, hooks on the last layer's query and key
  projections measure the attention each patch receives.
- Pruner (or a peer selector): `model.generate` and `model.forward` get wrappers that, for calls
  with `pixel_values_videos` and `input_ids`, encode the video, keep the selected tokens of each
  frame (round(n·keep_ratio) for the Pruner), drop the placeholders of the other tokens and hand
  the kept features (merged vectors for merging methods) to the original method through
  `mm_encoder_outputs`, with the position ids of the unpruned sequence gathered (RoPE sees the
  original positions). `generate` returns the caller's full `input_ids` followed by the new
  tokens, as without STC; `forward` returns outputs for the kept sequence only (the kept positions
  are in `stc.api.state_of(model).call.keep_mask`). Frames may keep different numbers of tokens
  (the adaptive budget, threshold modes of peer methods), but batch rows must keep equally many
  in all (otherwise: one row per call, or the streaming engine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.cacher import BlockOps, run_block
from stc.peers import FrameContext, MethodConfig, TokenMerging, attention_received, pixel_cells
from stc.state import STCState

from stc.integrations.adapters.contract import ClipBlocks, VideoLLMAdapter
from stc.integrations.adapters.patching import (BlockRecorder, InstancePatch, KeptSequence, install_prompt_pruning, mask_positions,
                   pooled, sequence_keep, time_span, video_keep_mask, video_prefill)
from stc.integrations.adapters.decoder import DecoderDriver
from stc.integrations.processing import as_frames


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
    """BlockOps of one SigLIP encoder layer; `dense_call(x)` runs the layer's original forward.

    The pieces call the weights and the modules' own `forward` directly: module calls would
    run the recorder's hooks (and the hook machinery) on every selective step."""
    attn = getattr(layer, SIGLIP.attn)
    q_proj, k_proj, v_proj, out_proj = (getattr(attn, n) for n in (SIGLIP.q, SIGLIP.k, SIGLIP.v, SIGLIP.out))
    mlp = getattr(layer, SIGLIP.mlp)
    heads, head_dim = attn.num_heads, attn.head_dim

    def attend(q: Tensor, k: Tensor, v: Tensor, index: Tensor) -> Tensor:
        frames, queries, width = q.shape
        tokens = k.shape[1]
        qh = q.view(frames, queries, heads, head_dim).transpose(1, 2)
        kh = k.view(frames, tokens, heads, head_dim).transpose(1, 2)
        vh = v.view(frames, tokens, heads, head_dim).transpose(1, 2)
        o = F.scaled_dot_product_attention(qh, kh, vh, scale=attn.scale)
        return F.linear(o.transpose(1, 2).reshape(frames, queries, width), out_proj.weight, out_proj.bias)

    return BlockOps(
        dense=lambda x: recorder.capture(lambda: dense_call(x)),
        norm1=getattr(layer, SIGLIP.norm1),
        key=lambda h: F.linear(h, k_proj.weight, k_proj.bias),
        query=lambda h: F.linear(h, q_proj.weight, q_proj.bias),
        value=lambda h: F.linear(h, v_proj.weight, v_proj.bias),
        attend=attend,
        norm2=getattr(layer, SIGLIP.norm2),
        mlp=lambda h: type(mlp).forward(mlp, h),
    )


def tome_siglip_layer(layer, x: Tensor, merging: TokenMerging, last: bool) -> Tensor:
    """One SigLIP encoder layer with ToMe: proportional attention, r tokens merged between the
    attention and the MLP (keys averaged over heads as the metric), and, after the last layer,
    every merged token copied back to the positions it absorbed."""
    attn = getattr(layer, SIGLIP.attn)
    rows, tokens, width = x.shape
    h = getattr(layer, SIGLIP.norm1)(x)
    q, k, v = (getattr(attn, name)(h).view(rows, tokens, attn.num_heads, -1).transpose(1, 2)
               for name in (SIGLIP.q, SIGLIP.k, SIGLIP.v))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=merging.attention_bias(x), scale=attn.scale)
    x = x + getattr(attn, SIGLIP.out)(o.transpose(1, 2).reshape(rows, tokens, width))
    x = merging.merge(x, k.mean(dim=1))
    x = x + getattr(layer, SIGLIP.mlp)(getattr(layer, SIGLIP.norm2)(x))
    return merging.unmerge(x) if last else x


def _install_siglip_layers(patcher: InstancePatch, layers, state: STCState) -> None:
    """Per-instance forwards of the SigLIP layers: the Cacher's plan, ToMe, or the original."""
    for layer_idx, layer in enumerate(layers):
        recorder = BlockRecorder()
        attn = getattr(layer, SIGLIP.attn)
        patcher.hook(getattr(attn, SIGLIP.k), recorder.hook_for("keys"))
        patcher.hook(getattr(attn, SIGLIP.v), recorder.hook_for("values"))
        patcher.hook(attn, recorder.hook_for("attn_out", lambda out: out[0]))
        patcher.hook(getattr(layer, SIGLIP.mlp), recorder.hook_for("mlp_out"))

        def make(original, layer=layer, layer_idx=layer_idx, recorder=recorder):
            def forward(hidden_states, attention_mask=None, **kwargs):
                plan, merging = state.call.plan, state.call.token_merging
                if plan is None and merging is None:
                    return original(hidden_states, attention_mask, **kwargs)
                if attention_mask is not None:
                    raise NotImplementedError("STC-Cacher and ToMe expect SigLIP without an attention mask")
                if merging is not None:
                    return tome_siglip_layer(layer, hidden_states, merging, last=layer_idx == len(layers) - 1)
                ops = siglip_block_ops(layer, recorder, lambda x: original(x, None, **kwargs))
                out, index = run_block(layer_idx, hidden_states, plan, ops)
                state.call.recomputed[layer_idx] = index
                return out

            return forward

        patcher.wrap_method(layer, "forward", make)


def _install_attention_probe(patcher: InstancePatch, layer, state: STCState) -> None:
    """While a video pass needs it (VisionZip), the attention each patch receives in `layer`,
    from the layer's own query and key projections, goes to `state.call.vit_attention` [rows, T]."""
    attn = getattr(layer, SIGLIP.attn)
    queries = {}

    def keep_queries(module, args, out):
        if state.call.encoding and "attention" in state.context_needs:
            queries["q"] = out

    def measure(module, args, out):
        if "q" in queries:
            state.call.vit_attention = attention_received(queries.pop("q"), out, attn.num_heads, attn.scale)

    patcher.hook(getattr(attn, SIGLIP.q), keep_queries)
    patcher.hook(getattr(attn, SIGLIP.k), measure)


class LlavaOnevisionAdapter(VideoLLMAdapter):
    family = "LLaVA-OneVision"
    video_placeholder = "<video>"

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

    def check_config(self, model, config) -> None:
        """ToMe un-merges after the last SigLIP layer, so the features must come from it."""
        if isinstance(config, MethodConfig) and config.selector.vit_side and model.config.vision_feature_layer != -1:
            raise ValueError(
                f"{config.method} merges tokens inside SigLIP and restores them after its last layer; it needs "
                f"vision_feature_layer -1, this model uses {model.config.vision_feature_layer!r}"
            )

    def install(self, model, state: STCState) -> None:
        self.patcher = InstancePatch()
        inner = model.model
        layers = inner.vision_tower.encoder.layers
        _install_siglip_layers(self.patcher, layers, state)
        _install_attention_probe(self.patcher, layers[-1], state)
        time_span(self.patcher, inner.vision_tower, inner.vision_tower, state.timer, "vit")
        time_span(self.patcher, inner.multi_modal_projector, inner.multi_modal_projector, state.timer, "projector")
        patch_size = model.config.vision_config.patch_size

        def make_video_features(original):
            def get_video_features(pixel_values_videos, *args, **kwargs):
                batch, frames, _, height, width = pixel_values_videos.shape
                tokens = (height // patch_size) * (width // patch_size)
                with state.video_pass([frames] * batch, tokens, geometry=(height, width)):
                    if state.merges_vit_tokens:
                        state.call.token_merging = TokenMerging(state.peer.options["r"], len(layers), tokens)
                    with state.timer.section("encode"):
                        out = original(pixel_values_videos, *args, **kwargs)
                features = out.pooler_output if hasattr(out, "pooler_output") else out[1]
                visual = [features.shape[1] - 1] * batch  # per video: one image_newline
                state.count_llm_tokens(visual, visual)
                return out

            return get_video_features

        self.patcher.wrap_method(inner, "get_video_features", make_video_features)

        install_prompt_pruning(self.patcher, model, lambda kwargs: self.prune_inputs(model, state, kwargs))

    # -- Streaming engine ----------------------------------------------------------------------

    def vision_output_module(self, model):
        """The module whose input is the vision tower's output (for fidelity measurements)."""
        return model.model.multi_modal_projector

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

    batches_streams = True

    def stream_blocks(self, model, state: STCState, pixels: Tensor, times: list[float], text) -> ClipBlocks:
        """One block per frame of pixels [1, F, ...]: the Cacher (or ToMe) runs inside the vision
        tower, the Pruner (or a peer selector) keeps k_i of n tokens per frame, and LLaVA-OneVision's
        trailing newline embedding is left out (as ReKV does). Layouts carry no data (plain RoPE)."""
        return self.stream_blocks_batch(model, state, [pixels], [times], [text])[0]

    def stream_blocks_batch(self, model, state: STCState, pixels: list[Tensor], times: list[list[float]],
                            texts: list) -> list[ClipBlocks]:
        """`stream_blocks` for several streams at once: their pixels [1, F, ...] (equal shapes) as
        the rows of one [B, F, ...] video batch, one `get_video_features` call (row b is stream b
        of `state`: its own Cacher references) and one selection over the rows (each stream's own
        Pruner history)."""
        batch = torch.cat(pixels)
        features = model.model.get_video_features(batch, return_dict=True).pooler_output
        frames = batch.shape[1]
        rows = [list(row[:-1].reshape(frames, -1, features.shape[-1])) for row in features]
        kept = [None] * len(rows)
        if state.selects:
            selections = state.select_streams([torch.stack(tokens) for tokens in rows],
                                              self.selection_contexts(model, state, batch))
            rows, kept = [s.tokens for s in selections], [s.positions for s in selections]
        return [ClipBlocks(tokens, [t.new_empty(0, len(t), dtype=torch.long) for t in tokens], [len(t) for t in tokens], k)
                for tokens, k in zip(rows, kept)]

    def selection_contexts(self, model, state: STCState, pixels: Tensor) -> list[FrameContext] | None:
        """Per stream (batch row of pixels [B, F, 3, H, W]), what the selector reads besides the
        tokens, on the pooled token grid: each token's pixels (EVS), the attention its patches
        received in SigLIP's last layer (VisionZip) and the share of SigLIP's layers in which the
        Cacher recomputed its patches (STC-Pruner's cacher_change), the last two pooled as the
        model pools features. Charged to the "selection" stage."""
        needs = state.context_needs
        if not needs:
            return None
        batch, frames, _, height, width = pixels.shape
        patch = model.config.vision_config.patch_size
        grid = (math.ceil(height // patch / 2), math.ceil(width // patch / 2))
        cells = attention = recomputed = None
        with state.timer.section("selection"):
            if "pixels" in needs:
                cells = pixel_cells(pixels.flatten(0, 1), grid).view(batch, frames, grid[0] * grid[1], -1)
            if "attention" in needs:
                received = state.call.vit_attention.view(batch * frames, 1, height // patch, width // patch)
                attention = F.interpolate(received, size=grid, mode="bilinear").view(batch, frames, -1)
            if "recomputed" in needs:
                share = state.call.recompute_share.view(batch * frames, 1, height // patch, width // patch)
                recomputed = F.interpolate(share, size=grid, mode="bilinear").view(batch, frames, -1)
        return [FrameContext(*(None if t is None else t[b] for t in (cells, attention, recomputed))) for b in range(batch)]

    # Positions: plain RoPE, one row; frames are consecutive tokens (layouts carry no data).
    def text_positions(self, start: int, count: int) -> Tensor:
        return torch.arange(start, start + count).view(1, -1)

    def visual_positions(self, start: int, layouts: list[Tensor]) -> tuple[Tensor, int]:
        count = sum(layout.shape[1] for layout in layouts)
        return torch.arange(start, start + count).view(1, -1), count

    # -- Pruner -----------------------------------------------------------------------------

    def prune_inputs(self, model, state: STCState, kwargs: dict) -> dict | None:
        """kwargs for the original generate/forward with only the kept video tokens, or None
        when nothing is pruned (no video, no input_ids, or no selection step)."""
        prefill = video_prefill(kwargs, state.selects)
        if prefill is None:
            return None
        input_ids, pixels = prefill
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
        selections = state.select_streams(list(frame_tokens), self.selection_contexts(model, state, pixels))
        rows = [torch.cat(s.tokens) for s in selections]
        if len({len(row) for row in rows}) > 1:
            raise ValueError(
                f"the rows of this batch keep different numbers of video tokens ({[len(row) for row in rows]}); "
                "a threshold mode or the adaptive budget (pruner_budget adaptive) varies the count per frame: pass one "
                "video per call, or use the streaming engine"
            )
        kept = torch.cat([torch.stack(rows), features[:, frames * per_frame :]], dim=1)

        is_video = input_ids == model.config.video_token_id
        expected = frames * per_frame + 1
        found = is_video.sum(dim=1)
        if not bool((found == expected).all()):
            raise ValueError(
                f"each row of input_ids must hold {expected} video tokens ({frames} frames x {per_frame} + 1 "
                f"newline) for pixel_values_videos of shape {tuple(pixels.shape)}; found {found.tolist()}"
            )
        keep_video = video_keep_mask(selections, [per_frame] * batch, input_ids.device).view(batch, -1)
        keep_video = torch.cat([keep_video, keep_video.new_ones(batch, 1)], dim=1)  # the newline stays
        seq_keep = sequence_keep(is_video, keep_video.flatten())
        state.call.keep_mask = seq_keep

        position_ids = kwargs.get("position_ids")
        attention_mask = kwargs.get("attention_mask")
        if position_ids is None:
            position_ids = mask_positions(attention_mask, batch, input_ids.shape[1], input_ids.device)
        sequence = KeptSequence(seq_keep)  # rows keep equally many tokens: no padding
        out["input_ids"] = sequence.gather(input_ids)
        out["position_ids"] = sequence.gather(position_ids)
        if attention_mask is not None:
            out["attention_mask"] = sequence.gather(attention_mask)
        out["mm_encoder_outputs"] = {**(kwargs.get("mm_encoder_outputs") or {}), "video": pooled(kept)}
        return out
