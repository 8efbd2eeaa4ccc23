"""STC-Cacher's blocks: a reference (dense) block, a selective block that recomputes a few tokens
against a reference, the mixed block of a batch holding both, and their compiled versions.

Pure tensor code (no transformers import). A model adapter describes one block of its vision
encoder as a `BlockOps` (how to normalise, project, attend and run the MLP) and calls
`run_block` for every block, which follows the encoder call's `FramePlan` (`stc.cacher.plan`) and
keeps the per-layer reference state of every stream.

Spec: ../shared/docs/stc-algorithm.md ("STC-Cacher"). For a non-reference frame, per layer:
K for all tokens, the r·T tokens whose key is least similar (cosine) to the reference key are
recomputed (Q, V, attention, MLP); the other rows reuse the reference's V, attention output and
MLP output, and every residual uses the current hidden state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.cacher.plan import FramePlan, grouped, lowest_similarity, unit_keys

@dataclass
class BlockReference:
    """Cached tensors of one block for one or more reference frames, each [R, T, C].

    `keys` are stored with unit norm per token: they are only used for cosine similarity.
    `branches` is the attention output plus the MLP output (each after its projection, before
    the residual add): a reused token's output is its current input plus the reference's
    branches, and a recomputed token replaces both, so the two are only ever used summed.
    """

    keys: Tensor
    values: Tensor
    branches: Tensor

    def row(self, i: int) -> BlockReference:
        """Reference i as a view [1, T, C] (no copy)."""
        return BlockReference(*(t.narrow(0, i, 1) for t in self.astuple()))

    def astuple(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.keys, self.values, self.branches

    def clone(self) -> BlockReference:
        return BlockReference(*(t.clone() for t in self.astuple()))


@dataclass
class BlockOps:
    """How to run the pieces of one pre-LN block (x + Attn(LN1 x); h + MLP(LN2 h)).

    `dense(x)` runs the model's own block on reference frames and returns its output together
    with the captured `BlockReference`. `norm1`, `key`, `query`, `value`, `norm2` and `mlp` act on
    each token alone; everything that depends on position (rotary embeddings, window attention)
    belongs to `attend(q, k, v, index)`, which receives `index` [F, k], the positions of the
    queries q [F, k, C] among the frame's keys [F, T, C]. `select(keys, ref_unit_keys, k)` picks
    the recomputed positions [F, k]; None means `lowest_similarity` over the whole frame
    (encoders whose attention is split into segments use a `SegmentSelection`).
    """

    dense: Callable[[Tensor], tuple[Tensor, BlockReference]]
    norm1: Callable[[Tensor], Tensor]
    key: Callable[[Tensor], Tensor]
    query: Callable[[Tensor], Tensor]
    value: Callable[[Tensor], Tensor]
    attend: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    norm2: Callable[[Tensor], Tensor]
    mlp: Callable[[Tensor], Tensor]
    select: Callable[[Tensor, Tensor, int], Tensor] | None = None


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """t in `dtype`, without dispatching an op when it already is (the selective path runs per
    layer and frame, where every dispatched op counts)."""
    return t if t.dtype == dtype else t.to(dtype)


class SegmentAttention:
    """Attention of each segment's recomputed queries against that segment's keys only, for the
    positions a `SegmentSelection` with the same sizes and quotas returns (ascending, so segment
    s's `quotas[s]` queries come in one run). Segments are batched, padded to the longest one
    (padded keys masked, padded queries dropped), so the cost is S·Q·W products instead of the
    k·T of one masked attention over the whole frame (S segments, at most Q queries and W keys
    each). Built once per layout and budget: a fixed set of device ops, no host synchronisation."""

    def __init__(self, sizes: Sequence[int], quotas: Sequence[int], device=None):
        count, width, most = len(sizes), max(sizes), max(quotas)
        sizes_t = torch.tensor(list(sizes), device=device).view(-1, 1)
        quotas_t = torch.tensor(list(quotas), device=device).view(-1, 1)
        key_slot = torch.arange(width, device=device).view(1, -1)
        query_slot = torch.arange(most, device=device).view(1, -1)
        self.keys = (sizes_t.cumsum(0) - sizes_t + key_slot.minimum(sizes_t - 1)).flatten()  # [S·W]
        padded = bool((sizes_t < width).any())
        self.mask = (key_slot < sizes_t).view(1, count, 1, 1, width) if padded else None
        first = quotas_t.cumsum(0) - quotas_t
        self.queries = (first + query_slot.minimum((quotas_t - 1).clamp_min(0))).flatten().clamp_max(max(sum(quotas) - 1, 0))
        self.back = (torch.arange(count, device=device).view(-1, 1) * most + query_slot)[query_slot < quotas_t]  # [k]
        self.shape = (count, most, width)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
        """q [F, k, H, D] (the selected queries, in position order); k, v [F, T, H, D] -> [F, k, H, D]."""
        frames, _, heads, dim = q.shape
        count, most, width = self.shape

        def batched(t: Tensor, rows: Tensor, length: int) -> Tensor:  # -> [F·S, H, length, D]
            return t.index_select(1, rows).view(frames * count, length, heads, dim).transpose(1, 2)

        mask = None if self.mask is None else self.mask.expand(frames, -1, -1, -1, -1).reshape(frames * count, 1, 1, width)
        out = F.scaled_dot_product_attention(
            batched(q, self.queries, most), batched(k, self.keys, width), batched(v, self.keys, width),
            attn_mask=mask, scale=scale,
        )  # [F·S, H, Q, D]
        return out.transpose(1, 2).reshape(frames, count * most, heads, dim).index_select(1, self.back)


def selective_block(x: Tensor, ref: BlockReference, ops: BlockOps, k: int, index: Tensor | None = None,
                    fresh: bool = False) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, BlockReference]:
    """One block on non-reference frames x [F, T, C] against their references [R, T, C] (R
    divides F: one shared reference, one per frame, or one per run of F/R consecutive frames;
    see `grouped`). Returns the block output [F, T, C] and the recomputed positions [F, k], and
    with `fresh` the recomputed rows as a reference would hold them ([F, k, C] each: keys, values,
    branches), for per-token refresh.

    Given `index` (shared selection: an earlier block's positions [F, k]), the block does not
    select: LayerNorm and K run on the recomputed tokens only and the other keys are the
    reference's, which must then hold raw keys (`reference_block(unit=False)`).

    A fixed sequence of device ops: the recomputed rows are gathered and scattered with one
    index, and reused rows never get materialised copies of the reference branches (the
    residual sums broadcast the references; only the k recomputed rows are overwritten).
    """
    frames, _, width = x.shape
    per_reference = frames // ref.values.shape[0]
    shared = index is not None
    if not shared:
        h = ops.norm1(x)
        keys = ops.key(h)
        index = (ops.select or lowest_similarity)(keys, ref.keys, k)
        at = index.unsqueeze(-1)
        h_dyn = h.gather(1, at.expand(frames, k, h.shape[-1]))
    else:
        k = index.shape[1]
        at = index.unsqueeze(-1)
        h_dyn = ops.norm1(x.gather(1, at.expand(frames, k, width)))
        k_dyn = ops.key(h_dyn)
        keys = ref.keys.repeat_interleave(per_reference, dim=0)  # a fresh copy per frame
        keys.scatter_(1, at.expand(frames, k, k_dyn.shape[-1]), _as(k_dyn, keys.dtype))
    v_dyn = ops.value(h_dyn)
    v_mix = ref.values.repeat_interleave(per_reference, dim=0)  # a fresh copy per frame
    v_mix.scatter_(1, at.expand(frames, k, v_dyn.shape[-1]), _as(v_dyn, v_mix.dtype))
    a_dyn = ops.attend(ops.query(h_dyn), keys, v_mix, index)
    rows = at.expand(frames, k, width)
    h_dyn = x.gather(1, rows) + _as(a_dyn, x.dtype)
    m_dyn = ops.mlp(ops.norm2(h_dyn))
    x4, branches4 = grouped(x, ref.branches)
    out = (x4 + branches4).flatten(0, 1)
    out = out.scatter_(1, rows, h_dyn + _as(m_dyn, out.dtype))
    if not fresh:
        return out, index
    key_rows = keys.gather(1, at.expand(frames, k, keys.shape[-1]))
    refreshed = BlockReference(key_rows if shared else unit_keys(key_rows), v_dyn,
                               _as(a_dyn, x.dtype) + _as(m_dyn, x.dtype))
    return out, index, refreshed


def reference_block(x: Tensor, ops: BlockOps, unit: bool = True) -> tuple[Tensor, BlockReference]:
    """One block run densely from its pieces on reference frames x [F, T, C]: its output and
    the reference it leaves (keys with unit norm; raw with `unit=False`, for a block that reuses
    an earlier block's selection). The compiled path's reference block; the eager path runs the
    model's own forward (`ops.dense`) instead, which this equals up to floating-point rounding."""
    frames, tokens, _ = x.shape
    index = torch.arange(tokens, device=x.device).expand(frames, tokens)
    h = ops.norm1(x)
    keys = ops.key(h)
    values = ops.value(h)
    attn_out = _as(ops.attend(ops.query(h), keys, values, index), x.dtype)
    h = x + attn_out
    mlp_out = _as(ops.mlp(ops.norm2(h)), x.dtype)
    return h + mlp_out, BlockReference(unit_keys(keys) if unit else keys, values, attn_out + mlp_out)


def _eager_reference(x: Tensor, ops: BlockOps, unit: bool = True) -> tuple[Tensor, BlockReference]:
    out, ref = ops.dense(x)
    if unit:
        ref.keys = unit_keys(ref.keys)
    return out, ref


def mixed_block(x: Tensor, ref_rows: Tensor, dyn_rows: Tensor, ops: BlockOps, k: int, first: int, count: int,
                index: Tensor | None = None, fresh: bool = False) -> tuple:
    """One block on a batch mixing reference rows and non-reference rows whose references are
    the batch's own references first..first+count-1 (`FramePlan.runs`): split, both blocks and
    merge as one function, so that the compiled path traces it as one graph. Returns the output,
    the batch's references and what `selective_block` returns after its output. With `index`
    (shared selection) the references keep raw keys."""
    ref_out, ref = reference_block(x.index_select(0, ref_rows), ops, unit=index is None)
    runs = BlockReference(*(t.narrow(0, first, count) for t in ref.astuple()))
    dyn_out, *rest = selective_block(x.index_select(0, dyn_rows), runs, ops, k, index=index, fresh=fresh)
    out = torch.empty_like(x).index_copy_(0, ref_rows, ref_out).index_copy_(0, dyn_rows, dyn_out)
    return (out, ref, *rest)


@functools.cache
def compiled_blocks() -> tuple[Callable, Callable, Callable]:
    """`reference_block`, `selective_block` and `mixed_block` under
    `torch.compile(fullgraph=True)`: each is traced once per geometry and shared by every layer
    (the layer's modules are inputs of the graph, not constants), so a stream compiles once and
    then only replays."""
    return tuple(torch.compile(f, fullgraph=True, dynamic=False) for f in (reference_block, selective_block, mixed_block))


def _references_of(table: list[BlockReference], batch: BlockReference | None, plan: FramePlan, dyn_source: Tensor) -> BlockReference:
    """The references of the non-reference rows, as `selective_block` takes them: a view of the
    table when they form runs (`FramePlan.runs`), else one gathered row per frame."""
    carried = len(plan.carried_streams)
    if plan.runs is not None:
        first, count = plan.runs
        if first < carried:
            return table[first]
        return BlockReference(*(t.narrow(0, first - carried, count) for t in batch.astuple()))
    if carried == 0:
        return BlockReference(*(t.index_select(0, dyn_source) for t in batch.astuple()))
    fields = zip(*(ref.astuple() for ref in table[:carried]), *([batch.astuple()] if batch is not None else []))
    return BlockReference(*(torch.cat(parts).index_select(0, dyn_source) for parts in fields))


def run_block(layer_idx: int, x: Tensor, plan: FramePlan, ops: BlockOps) -> tuple[Tensor, Tensor | None]:
    """Run block `layer_idx` on an encoder batch x [rows, T, C] following `plan`, and store the
    newest reference of every stream. Returns the output and the recomputed positions of the
    non-reference rows ([len(dyn_rows), k] in `dyn_rows` order, or None when all are references).

    All non-reference rows go through one `selective_block` call, whatever reference each uses;
    on the compiled path a batch whose non-reference rows use its own references in runs (the
    usual chunk of a stream) is one graph (`mixed_block`). With shared selection, a block after
    the first that selects over the whole frame reuses the first block's positions; with
    per-token refresh, each stream's newest reference takes the rows its last frame recomputed.
    """
    if plan.replan is not None:
        plan.detect_cuts(x, ops)
    ref_rows, dyn_rows, dyn_source = plan.indices(x.device)
    table = [plan.streams[s].blocks[layer_idx] for s in plan.carried_streams]
    carried, k = len(plan.carried_streams), plan.recompute_for(ops)
    shared = plan.shared_index if layer_idx > 0 and ops.select is None else None
    unit, fresh = shared is None, plan.refresh_tokens
    reference, selective, mixed = compiled_blocks() if plan.compiled else (_eager_reference, selective_block, None)
    batch_ref, index, refreshed = None, None, None
    if plan.all_references:
        out, batch_ref = reference(x, ops, unit=unit)
    elif plan.all_dynamic:
        out, index, *refreshed = selective(x, _references_of(table, None, plan, dyn_source), ops, k, index=shared, fresh=fresh)
    elif plan.compiled and plan.runs is not None and plan.runs[0] >= carried:
        first, count = plan.runs
        out, batch_ref, index, *refreshed = mixed(x, ref_rows, dyn_rows, ops, k, first - carried, count, index=shared, fresh=fresh)
    else:
        out = torch.empty_like(x)
        ref_out, batch_ref = reference(x.index_select(0, ref_rows), ops, unit=unit)
        out.index_copy_(0, ref_rows, ref_out)
        references = _references_of(table, batch_ref, plan, dyn_source)
        dyn_out, index, *refreshed = selective(x.index_select(0, dyn_rows), references, ops, k, index=shared, fresh=fresh)
        out.index_copy_(0, dyn_rows, _as(dyn_out, out.dtype))
    for s, row in plan.last_ref.items():
        if row >= carried:  # a newer reference was computed in this batch
            blocks = plan.streams[s].blocks
            blocks[layer_idx] = _stored(blocks.get(layer_idx), batch_ref.row(row - carried))
    if index is not None:
        plan.recomputed[layer_idx] = index.shape[0] * index.shape[1]
        if layer_idx == 0 and plan.share_selection:
            plan.shared_index = index
    if refreshed:
        for s, j in plan.refresh_rows.items():
            blocks = plan.streams[s].blocks
            blocks[layer_idx] = _refreshed(blocks[layer_idx], index[j], refreshed[0].row(j))
    return out, index


def _refreshed(held: BlockReference, positions: Tensor, rows: BlockReference) -> BlockReference:
    """Per-token refresh: `held` [1, T, C] with its entries at `positions` [k] replaced by `rows`
    [1, k, C], in place (the reference keeps its addresses) unless it cannot be written here."""
    if not torch.is_inference_mode_enabled() and held.keys.is_inference():
        held = held.clone()
    for old, new in zip(held.astuple(), rows.astuple()):
        old.index_copy_(1, positions, _as(new, old.dtype))
    return held


def _stored(held: BlockReference | None, new: BlockReference) -> BlockReference:
    """`new` as a stream keeps it: copied into the buffers of the reference the stream held
    when they fit, so a stream allocates its references once and they keep their addresses
    (what replaying a captured graph needs), else a fresh copy. (An inference-mode tensor
    cannot be written outside inference mode: then a fresh copy too.)"""
    pairs = list(zip(held.astuple(), new.astuple())) if held is not None else []
    if pairs and all(old.shape == t.shape and old.dtype == t.dtype and old.device == t.device
                     and (torch.is_inference_mode_enabled() or not old.is_inference()) for old, t in pairs):
        for old, t in pairs:
            old.copy_(t)
        return held
    return new.clone()
