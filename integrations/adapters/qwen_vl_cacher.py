"""STC-Cacher inside the Qwen-VL vision encoder (Qwen2-VL, Qwen2.5-VL and the Qwen3 families).

Every block of `model.model.visual` gets a per-instance forward that follows the Cacher's plan
while the inner `model.model.get_video_features` runs (images pass through the original blocks
untouched). The flat hidden states [S*T, C] are viewed as [S slices, T, C]; the attention segments
of the block (per slice for Qwen2-VL and for Qwen2.5-VL's full-attention blocks, windows for its
other blocks) are read from the `cu_seqlens` the block receives. Rows of Qwen2.5-VL arrive in
window order (the same permutation in every slice), so token i of a slice is compared with token
i of the reference slice and the model itself undoes the permutation after the merger. On
non-reference slices each segment recomputes its share of the r*T budget (its lowest-similarity
keys), and recomputed queries attend only to keys of their own segment (`SegmentAttention`:
windows batched, not one masked attention over the slice), with the model's own vision rotary
embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.cacher import BlockOps, BlockReference, SegmentAttention, SegmentSelection, run_block, segment_quotas
from stc.state import STCState

from stc.integrations.adapters.patching import BlockRecorder, InstancePatch
from stc.integrations.adapters.qwen_vl_layout import QwenVLLayout


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


def install_cacher(patcher: InstancePatch, blocks, names: QwenVLLayout, state: STCState, apply_rotary) -> None:
    """Give every vision block a forward that follows `state.call.plan` (the original forward when
    no plan is set), with hooks that record its keys, values and sublayer outputs."""
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


__all__ = ["SliceLayout", "install_cacher", "qwen_block_ops", "slice_layout"]
