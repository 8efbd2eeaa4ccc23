"""STC adapter for Qwen2-VL and Qwen2.5-VL (`Qwen2VLForConditionalGeneration`,
`Qwen2_5_VLForConditionalGeneration`, transformers 5.x).

The unit in time is the temporal slice: the Conv3d patch embedding folds `temporal_patch_size`
(= 2) consecutive frames into one slice of h*w patches, and every attention segment of the vision
encoder stays inside one slice. Everything STC counts or plans as a "frame" (the Cacher's
references, `stc.stats(model)["frames"]`, the Pruner's per-frame budget, the streaming engine's
blocks) is a temporal slice for these models. An odd frame count is padded by repeating the last
frame (as Qwen's processor does); for raw pixel input the slice count is `video_grid_thw[:, 0]`.

Where STC goes:
- Cacher: every block of `model.model.visual` gets a per-instance forward that follows the
  Cacher's plan while the inner `model.model.get_video_features` runs (images pass through the
  original blocks untouched). The flat hidden states [S*T, C] are viewed as [S slices, T, C];
  the attention segments of the block (per slice for Qwen2-VL and for Qwen2.5-VL's full-attention
  blocks, windows for its other blocks) are read from the `cu_seqlens` the block receives. Rows
  of Qwen2.5-VL arrive in window order (the same permutation in every slice), so token i of a
  slice is compared with token i of the reference slice and the model itself undoes the
  permutation after the merger. On non-reference slices each segment recomputes its share of the
  r*T budget (its lowest-similarity keys), and recomputed queries attend only to keys of their
  own segment (`SegmentAttention`: windows batched, not one masked attention over the slice),
  with the model's own vision rotary embedding.
- Pruner (or a peer selector): `model.generate` and `model.forward` get wrappers that, for calls
  with `pixel_values_videos` and `input_ids`, encode the video, keep the selected merged tokens of
  each temporal slice (round(n*keep_ratio) for the Pruner), compute mRoPE positions on the UNPRUNED
  sequence with the model's own `get_rope_index`, gather them (and the attention mask,
  `mm_token_type_ids`, `input_ids`) with the keep index, and hand the kept features to the original
  method through `mm_encoder_outputs` with the 4-row position ids generate uses (row 0: contiguous
  text positions of the kept sequence, rows 1-3: the gathered mRoPE rows).
  `model.model.rope_deltas` is set to the unpruned deltas plus the number of dropped tokens of each
  row, so a decode step that derives positions from the cache length continues where the unpruned
  sequence would. `generate` returns the caller's `input_ids` followed by the new tokens; `forward`
  returns outputs for the kept sequence (rows left-padded to the longest kept row; kept positions
  in `stc.api.state_of(model).call.keep_mask`).

Peer methods: the post-encoder selectors (VidCom2, DyCoke, TimeChat-Online, EVS, uniform, random)
run per temporal slice; EVS reads each merged token's pixels (its 2x2 patches, both frames of the
slice). ToMe and VisionZip are LLaVA-OneVision only (`check_config` says why).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.cacher import BlockOps, BlockReference, SegmentAttention, SegmentSelection, run_block, segment_quotas
from stc.peers import FrameContext, MethodConfig
from stc.state import STCState

from stc.integrations.adapters.contract import ClipBlocks, VideoLLMAdapter
from stc.integrations.adapters.patching import (BlockRecorder, InstancePatch, KeptSequence, install_prompt_pruning, mask_positions,
                   pooled, sequence_keep, time_span, video_keep_mask, video_prefill)
from stc.integrations.adapters.decoder import DecoderDriver
from stc.integrations.processing import FramePreprocessing, QwenVideoPreprocessing, as_frames


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


def _rope_continuation(inner, merge_size: int, video_token: int) -> str:
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


# -- Cacher -----------------------------------------------------------------------------------


@dataclass
class SliceLayout:
    """The per-slice structure of one vision block call: T rows per temporal slice, the sizes of
    the attention segments inside a slice (one segment = the whole slice), and the rotary
    (cos, sin) rows of one slice [T, head_dim] (the same for every slice)."""

    slices: int
    tokens: int
    sizes: list[int]
    cos: Tensor
    sin: Tensor
    _windows: dict[int, tuple[SegmentSelection, SegmentAttention]] = field(default_factory=dict, repr=False)

    def windows(self, budget: int) -> tuple[SegmentSelection, SegmentAttention]:
        """The Cacher's per-segment choice of `budget` recomputed rows and the window attention of
        those rows (built once per layout and budget; `budget` = all rows for a reference block)."""
        if budget not in self._windows:
            quotas = segment_quotas(self.sizes, budget)
            self._windows[budget] = (SegmentSelection(self.sizes, quotas, self.cos.device),
                                     SegmentAttention(self.sizes, quotas, self.cos.device))
        return self._windows[budget]

    def cu_seqlens(self, slices: int, like: Tensor) -> Tensor:
        """cu_seqlens for `slices` consecutive slices (dtype and device of `like`)."""
        starts = torch.tensor([0] + self.sizes[:-1], device=like.device).cumsum(0)
        offsets = torch.arange(slices, device=like.device).view(-1, 1) * self.tokens
        bounds = torch.cat([(starts.view(1, -1) + offsets).flatten(), torch.tensor([slices * self.tokens], device=like.device)])
        return bounds.to(like.dtype)


def slice_layout(hidden_states: Tensor, cu_seqlens: Tensor, position_embeddings, slices: int) -> SliceLayout:
    """SliceLayout of a block call on `slices` temporal slices of equal size, or an error when
    the segments or rotary rows do not repeat slice by slice."""
    rows = hidden_states.shape[0]
    if rows % slices:
        raise ValueError(f"{rows} vision rows do not split into {slices} temporal slices")
    tokens = rows // slices
    bounds = [int(b) for b in cu_seqlens.tolist()]
    pattern = [b for b in bounds if b <= tokens]
    expected = [b + s * tokens for s in range(slices) for b in pattern[:-1]] + [rows]
    if pattern[-1] != tokens or bounds != expected:
        raise NotImplementedError("STC-Cacher needs every attention segment inside one temporal slice, repeated per slice")
    cos, sin = position_embeddings
    cos_t, sin_t = cos[:tokens], sin[:tokens]
    if not (torch.equal(cos.view(slices, tokens, -1), cos_t.expand(slices, -1, -1))
            and torch.equal(sin.view(slices, tokens, -1), sin_t.expand(slices, -1, -1))):
        raise NotImplementedError("STC-Cacher needs the same vision rotary positions in every temporal slice")
    sizes = [b - a for a, b in zip(pattern[:-1], pattern[1:])]
    return SliceLayout(slices, tokens, sizes, cos_t, sin_t)


def gather_frames(features: Tensor, positions: list[Tensor]) -> Tensor:
    """[layers, F, n, D] features -> [layers, sum k_f, D]: frame f's `positions[f]`, frames in order."""
    return torch.cat([features[:, f, p.to(features.device)] for f, p in enumerate(positions)], dim=1)


def _rotate(apply_rotary, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [..., L, H, D] rotated by the model's own `apply_rotary_pos_emb_vision` (its second
    operand is an empty head slice of x, so only x is computed)."""
    return apply_rotary(x, x[..., :0, :], cos, sin)[0]


def qwen_block_ops(block, layout: SliceLayout, names: QwenVLLayout, recorder: BlockRecorder, dense_call, apply_rotary, budget: int) -> BlockOps:
    """BlockOps of one Qwen vision block for slices [F, T, C]; `dense_call(x_flat, cu_seqlens,
    position_embeddings)` runs the block's original forward."""
    attn = getattr(block, names.attn)
    qkv, proj = getattr(attn, names.qkv), getattr(attn, names.proj)
    width = qkv.in_features
    heads = attn.num_heads
    head_dim = width // heads
    part = {name: i for i, name in enumerate(names.qkv_order)}
    weights = qkv.weight.split(width)
    biases = qkv.bias.split(width) if qkv.bias is not None else (None, None, None)
    (w_q, b_q), (w_k, b_k), (w_v, b_v) = ((weights[part[n]], biases[part[n]]) for n in "qkv")
    segmented = len(layout.sizes) > 1
    # Built here, outside any compiled graph: by query count, the selective and reference blocks'.
    windows = {n: layout.windows(n)[1] for n in (budget, layout.tokens)} if segmented else {}

    def dense(x: Tensor) -> tuple[Tensor, BlockReference]:
        count = x.shape[0]
        cu = layout.cu_seqlens(count, like=dense_call.cu_seqlens)
        pe = (layout.cos.repeat(count, 1), layout.sin.repeat(count, 1))
        out, ref = recorder.capture(lambda: dense_call(x.reshape(-1, width), cu, pe))
        return out.view_as(x), BlockReference(*(t.reshape(count, layout.tokens, -1) for t in ref.astuple()))

    def attend(q: Tensor, k: Tensor, v: Tensor, index: Tensor) -> Tensor:
        frames, queries, _ = q.shape
        tokens = k.shape[1]
        q_rot = _rotate(apply_rotary, q.view(frames, queries, heads, head_dim), layout.cos[index], layout.sin[index])
        k_rot = _rotate(apply_rotary, k.view(frames, tokens, heads, head_dim), layout.cos, layout.sin)
        v = v.view(frames, tokens, heads, head_dim).to(q_rot.dtype)
        if segmented:  # each recomputed query attends to the keys of its own window only
            o = windows[queries](q_rot, k_rot, v, attn.scaling)
        else:
            o = F.scaled_dot_product_attention(
                q_rot.transpose(1, 2), k_rot.transpose(1, 2), v.transpose(1, 2), scale=attn.scaling
            ).transpose(1, 2)
        return proj(o.reshape(frames, queries, width))

    select = layout.windows(budget)[0] if segmented else None
    return BlockOps(
        dense=dense,
        norm1=getattr(block, names.norm1),
        key=lambda h: F.linear(h, w_k, b_k),
        query=lambda h: F.linear(h, w_q, b_q),
        value=lambda h: F.linear(h, w_v, b_v),
        attend=attend,
        norm2=getattr(block, names.norm2),
        mlp=getattr(block, names.mlp),
        select=select,
    )


class _DenseCall:
    """The original block forward bound to one call's kwargs; full-batch calls reuse the
    call's own cu_seqlens and rotary tensors."""

    def __init__(self, original, cu_seqlens, position_embeddings, kwargs, rows):
        self.original, self.cu_seqlens, self.position_embeddings = original, cu_seqlens, position_embeddings
        self.kwargs, self.rows = kwargs, rows

    def __call__(self, x, cu, pe):
        if x.shape[0] == self.rows:
            cu, pe = self.cu_seqlens, self.position_embeddings
        return self.original(x, cu, pe, **self.kwargs)


class _LayoutCache:
    """SliceLayouts of the current encoder pass, shared by the blocks: window blocks and
    full-attention blocks each receive one cu_seqlens tensor and one rotary tuple per pass."""

    def __init__(self):
        self.plan = None
        self.layouts: dict[tuple[int, int], SliceLayout] = {}

    def get(self, plan, hidden_states, cu_seqlens, position_embeddings) -> SliceLayout:
        if plan is not self.plan:
            self.plan, self.layouts = plan, {}
        key = (id(cu_seqlens), id(position_embeddings[0]))
        if key not in self.layouts:
            self.layouts[key] = slice_layout(hidden_states, cu_seqlens, position_embeddings, plan.num_rows)
        return self.layouts[key]


def _install_cacher(patcher: InstancePatch, blocks, names: QwenVLLayout, state: STCState, apply_rotary) -> None:
    layouts = _LayoutCache()
    for layer_idx, block in enumerate(blocks):
        recorder = BlockRecorder()
        attn = getattr(block, names.attn)
        qkv = getattr(attn, names.qkv)
        width = qkv.in_features
        k_at, v_at = (names.qkv_order.index(n) * width for n in "kv")
        patcher.hook(qkv, recorder.hook_for("keys", lambda out, a=k_at, w=width: out[..., a : a + w]))
        patcher.hook(qkv, recorder.hook_for("values", lambda out, a=v_at, w=width: out[..., a : a + w]))
        patcher.hook(attn, recorder.hook_for("attn_out"))
        patcher.hook(getattr(block, names.mlp), recorder.hook_for("mlp_out"))

        def make(original, block=block, layer_idx=layer_idx, recorder=recorder):
            def forward(hidden_states, cu_seqlens, position_embeddings=None, **kwargs):
                plan = state.call.plan
                if plan is None:
                    return original(hidden_states, cu_seqlens, position_embeddings, **kwargs)
                layout = layouts.get(plan, hidden_states, cu_seqlens, position_embeddings)
                dense_call = _DenseCall(original, cu_seqlens, position_embeddings, kwargs, hidden_states.shape[0])
                ops = qwen_block_ops(block, layout, names, recorder, dense_call, apply_rotary, plan.num_recompute)
                out, index = run_block(layer_idx, hidden_states.view(plan.num_rows, layout.tokens, -1), plan, ops)
                state.call.recomputed[layer_idx] = index
                return out.reshape_as(hidden_states)

            return forward

        patcher.wrap_method(block, "forward", make)


# -- Adapter ----------------------------------------------------------------------------------

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
        return _rope_continuation(inner, merge_size, video_token)

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
        vision = getattr(inner, names.vision)
        blocks = getattr(vision, names.blocks)
        _install_cacher(self.patcher, blocks, names, state, self._apply_rotary(model))
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
                visual = sum(t * hh * ww for t, hh, ww in grid) // merge
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
                video_grid_thw=grid,
                second_per_grid_ts=kwargs.get("second_per_grid_ts"),
                attention_mask=attention_mask,
            )
        elif position_ids.ndim == 3 and position_ids.shape[0] == 4:
            position_ids = position_ids[1:]
        elif position_ids.ndim == 2:
            position_ids = position_ids[None].expand(3, -1, -1)

        # Gather every sequence-indexed tensor; rows with fewer kept tokens are left-padded.
        sequence = KeptSequence(seq_keep)
        out = {k: v for k, v in kwargs.items() if k not in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
        pad_id = model.config.text_config.pad_token_id
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
        pixel_values, grid = pixels
        if grid.shape[0] != 1:
            raise ValueError(f"a stream's clip is one video, got video_grid_thw {grid.tolist()}")
        encoded = model.model.get_video_features(pixel_values, grid, return_dict=True)
        slices, h, w = (int(v) for v in grid[0].tolist())
        rows, cols = h // self.facts.merge_size, w // self.facts.merge_size
        features = encoded.pooler_output[0].view(slices, rows * cols, -1)
        extras = self.extra_features(encoded, 0, slices, rows * cols)
        if not state.selects:
            return ClipSlices(rows, cols, list(features), None, [torch.arange(rows * cols)] * slices, extras)
        selection = state.select_streams([features], self.selection_contexts(state, pixel_values, grid))[0]
        return ClipSlices(rows, cols, selection.tokens, selection.positions, [p.cpu() for p in selection.positions], extras)

    def stream_blocks(self, model, state: STCState, pixels, times: list[float], text) -> ClipBlocks:
        """One block per temporal slice; layouts: [2, k] (h, w) grid coordinates of the kept
        merged tokens."""
        clip = self.encode_clip(model, state, pixels)
        layouts = [torch.stack([row // clip.cols, row % clip.cols]) for row in clip.positions]
        return ClipBlocks(clip.tokens, layouts, [len(x) for x in clip.tokens], clip.kept)

    def selection_contexts(self, state: STCState, pixels: Tensor, grid: Tensor) -> list[FrameContext] | None:
        """Per video of pixel_values_videos (flat patches, grid [videos, 3]), what the selector
        reads besides the tokens: each merged token's pixels [t, n, merge^2 * patch pixels] (EVS;
        the processor lays a merged token's patches out consecutively)."""
        if "pixels" not in state.context_needs:
            return None
        sizes = [t * h * w for t, h, w in grid.tolist()]
        merge = self.facts.merge_size**2
        return [FrameContext(pixels=video.reshape(t, h * w // merge, -1))
                for video, (t, h, w) in zip(pixels.split(sizes), grid.tolist())]

    # Positions: three mRoPE rows (temporal, height, width).
    def text_positions(self, start: int, count: int) -> Tensor:
        return torch.arange(start, start + count).view(1, -1).expand(3, -1)

    def visual_positions(self, start: int, layouts: list[Tensor]) -> tuple[Tensor, int]:
        """Slice j of `layouts` at t = start + floor(j * time_interval), h = start + row,
        w = start + column (as get_rope_index places a video that starts at `start`). The extent
        is where get_rope_index continues text after such a video: max(H', W') (transformers 5.x)
        or max(t_last + 1, H', W') (the original Qwen rule), with H', W' the largest kept row and
        column + 1 (the grid size when nothing is pruned)."""
        if not layouts:
            return torch.zeros(3, 0, dtype=torch.long), 0
        steps = (torch.arange(len(layouts)) * self.time_interval).long()
        counts = torch.tensor([layout.shape[1] for layout in layouts])
        temporal = torch.repeat_interleave(steps, counts)
        spatial = torch.cat(list(layouts), dim=1)
        positions = torch.cat([temporal[None], spatial]) + start
        extent = int(spatial.max()) + 1 if spatial.numel() else 0
        if self.facts.text_after_video == "all":
            extent = max(extent, int(steps[-1]) + 1)
        return positions, extent


__all__ = ["QWEN_VL_LAYOUTS", "QwenVLAdapter", "QwenVLFacts", "QwenVLLayout", "SliceLayout", "gather_frames", "qwen_block_ops",
           "slice_layout"]
