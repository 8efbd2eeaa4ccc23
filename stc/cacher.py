"""STC-Cacher: selective recompute of pre-LayerNorm transformer blocks against a reference frame.

Pure tensor code (no transformers import). A model adapter describes one block of its vision
encoder as a `BlockOps` (how to normalise, project, attend and run the MLP) and calls
`run_block` for every block; this module decides which frames are references, which tokens are
recomputed, and keeps the per-layer reference state of every stream.

Spec: ../shared/docs/stc-algorithm.md ("STC-Cacher"). For a non-reference frame, per layer:
K for all tokens, the r·T tokens whose key is least similar (cosine) to the reference key are
recomputed (Q, V, attention, MLP); the other rows reuse the reference's V, attention output and
MLP output, and every residual uses the current hidden state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class BlockReference:
    """Cached tensors of one block for one or more reference frames, each [R, T, C].

    `keys` are stored with unit norm per token: they are only used for cosine similarity.
    """

    keys: Tensor
    values: Tensor
    attn_out: Tensor
    mlp_out: Tensor

    def row(self, i: int) -> BlockReference:
        """Reference i as a view [1, T, C] (no copy)."""
        return BlockReference(*(t.narrow(0, i, 1) for t in self.astuple()))

    def astuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.keys, self.values, self.attn_out, self.mlp_out

    def clone(self) -> BlockReference:
        return BlockReference(*(t.clone() for t in self.astuple()))


@dataclass
class BlockOps:
    """How to run the pieces of one pre-LN block (x + Attn(LN1 x); h + MLP(LN2 h)).

    `dense(x)` runs the model's own block on reference frames and returns its output together
    with the captured `BlockReference`. `query`, `value` and `attend` receive `index` [F, k], the
    positions of the recomputed tokens, for encoders whose projections depend on position
    (rotary embeddings, window attention). `select(keys, ref_unit_keys, k)` picks the recomputed
    positions [F, k]; None means `lowest_similarity` over the whole frame (encoders whose attention
    is split into segments use `lowest_similarity_in_segments`).
    """

    dense: Callable[[Tensor], tuple[Tensor, BlockReference]]
    norm1: Callable[[Tensor], Tensor]
    key: Callable[[Tensor], Tensor]
    query: Callable[[Tensor, Tensor], Tensor]
    value: Callable[[Tensor, Tensor], Tensor]
    attend: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    norm2: Callable[[Tensor], Tensor]
    mlp: Callable[[Tensor], Tensor]
    select: Callable[[Tensor, Tensor, int], Tensor] | None = None


def num_recomputed(tokens: int, update_ratio: float) -> int:
    """k = max(1, floor(r·T)): tokens recomputed per layer on a non-reference frame."""
    return min(tokens, max(1, math.floor(update_ratio * tokens + 1e-9)))


def unit_keys(keys: Tensor) -> Tensor:
    return F.normalize(keys.float(), dim=-1).to(keys.dtype)


def key_similarity(keys: Tensor, ref_unit_keys: Tensor) -> Tensor:
    """Cosine similarity [F, T] (float32 or float64) of keys [F, T, C] to unit-norm reference
    keys [F or 1, T, C] at the same positions."""
    dot = torch.linalg.vecdot(keys, ref_unit_keys.expand_as(keys)).float()
    return dot / torch.linalg.vector_norm(keys, dim=-1).float().clamp_min(1e-12)


def lowest_similarity(keys: Tensor, ref_unit_keys: Tensor, k: int) -> Tensor:
    """Positions [F, k] (ascending) of the k tokens whose key has the lowest cosine similarity
    to the reference key at the same position. keys [F, T, C]; ref_unit_keys [F or 1, T, C]
    with unit norm."""
    index = torch.topk(key_similarity(keys, ref_unit_keys), k, dim=-1, largest=False, sorted=False).indices
    return index.sort(dim=-1).values


def segment_quotas(sizes: Sequence[int], k: int) -> list[int]:
    """Split a budget of k recomputed tokens over attention segments of the given sizes in
    proportion to their sizes (largest remainder; ties go to the earlier segment). The quotas
    sum to k and never exceed a segment's size."""
    total = sum(sizes)
    if not 0 <= k <= total:
        raise ValueError(f"cannot recompute {k} of {total} tokens")
    shares = [k * size / total for size in sizes]
    quotas = [math.floor(share + 1e-9) for share in shares]
    rest = k - sum(quotas)
    order = sorted(range(len(sizes)), key=lambda i: (-(shares[i] - quotas[i]), i))
    for i in order[:rest]:
        quotas[i] += 1
    return quotas


def lowest_similarity_in_segments(keys: Tensor, ref_unit_keys: Tensor, sizes: Sequence[int], quotas: Sequence[int]) -> Tensor:
    """Like `lowest_similarity`, but per attention segment: the tokens of each frame are split
    into consecutive segments of `sizes` (the same for every frame) and segment s recomputes its
    `quotas[s]` least similar tokens. Returns positions [F, sum(quotas)], ascending. Vectorised:
    one sort by similarity, one stable sort by segment."""
    similarity = key_similarity(keys, ref_unit_keys)
    device = similarity.device
    sizes_t = torch.tensor(list(sizes), device=device)
    quotas_t = torch.tensor(list(quotas), device=device)
    segment = torch.repeat_interleave(torch.arange(len(sizes_t), device=device), sizes_t)  # [T]
    order = similarity.argsort(dim=-1)  # ascending similarity
    order = order.gather(1, segment[order].argsort(dim=-1, stable=True))  # grouped by segment
    starts = sizes_t.cumsum(0) - sizes_t
    rank = torch.arange(len(segment), device=device) - starts[segment]  # rank within the segment
    chosen = order[:, rank < quotas_t[segment]]
    return chosen.sort(dim=-1).values


def selective_block(x: Tensor, ref: BlockReference, ops: BlockOps, k: int) -> tuple[Tensor, Tensor]:
    """One block on non-reference frames x [F, T, C] against their reference ([1, T, C],
    shared, or [F, T, C]). Returns the block output [F, T, C] and the recomputed positions [F, k].

    Reused rows never get materialised copies of the reference branches: the residual sums
    broadcast the reference, and only the k recomputed rows are overwritten.
    """
    h = ops.norm1(x)
    keys = ops.key(h)
    index = (ops.select or lowest_similarity)(keys, ref.keys, k)
    rows = (torch.arange(x.shape[0], device=x.device).unsqueeze(1), index)
    h_dyn = h[rows]
    q_dyn = ops.query(h_dyn, index)
    v_mix = ref.values.expand_as(keys).clone()
    v_mix[rows] = ops.value(h_dyn, index).to(v_mix.dtype)
    a_dyn = ops.attend(q_dyn, keys, v_mix, index)
    h = x + ref.attn_out
    h[rows] = x[rows] + a_dyn.to(h.dtype)
    h_dyn = h[rows]
    m_dyn = ops.mlp(ops.norm2(h_dyn))
    out = h + ref.mlp_out
    out[rows] = h_dyn + m_dyn.to(out.dtype)
    return out, index


@dataclass
class StreamCache:
    """Reference state of one stream: frames seen so far and each block's last reference."""

    frames_seen: int = 0
    geometry: tuple | None = None
    blocks: dict[int, BlockReference] = field(default_factory=dict)

    def clear(self) -> None:
        self.frames_seen = 0
        self.geometry = None
        self.blocks.clear()


@dataclass
class FramePlan:
    """Which rows of one encoder batch are references and what each other row reuses.

    The reference table of a block is [carried references of `carried_streams`] followed by the
    references computed in this batch (in `ref_rows` order); `dyn_source[i]` is the table row
    that non-reference row `dyn_rows[i]` is compared against.
    """

    num_rows: int
    ref_rows: Tensor
    dyn_rows: Tensor
    dyn_source: Tensor
    carried_streams: list[int]
    last_ref: dict[int, int]  # stream -> table row of its newest reference
    num_recompute: int
    streams: list[StreamCache]


def plan_frames(
    streams: Sequence[StreamCache],
    frames_per_stream: Sequence[int],
    interval: int,
    update_ratio: float,
    tokens: int,
    geometry: tuple,
) -> FramePlan:
    """Plan an encoder batch holding `frames_per_stream[s]` consecutive frames of stream s,
    stream-major. Frame t of a stream (0-based since its start) is a reference when
    t mod interval == 0 or when the stream has no usable reference yet."""
    ref_rows, dyn_rows, dyn_source, carried, last_ref = [], [], [], [], {}
    carried_slot = {}
    for s, stream in enumerate(streams):
        if stream.geometry == geometry and stream.blocks:
            carried_slot[s] = len(carried)
            carried.append(s)
    row = 0
    batch_refs = []  # (stream, row)
    newest: dict[int, tuple[str, int]] = {s: ("carried", carried_slot[s]) for s in carried_slot}
    for s, count in enumerate(frames_per_stream):
        t0 = streams[s].frames_seen
        for i in range(count):
            t = t0 + i
            if t % interval == 0 or s not in newest:
                batch_refs.append((s, row))
                newest[s] = ("batch", len(batch_refs) - 1)
            else:
                dyn_rows.append(row)
                dyn_source.append(newest[s])
            row += 1
    ref_rows = [r for _, r in batch_refs]

    def table_row(source: tuple[str, int]) -> int:
        kind, i = source
        return i if kind == "carried" else len(carried) + i

    for s, source in newest.items():
        last_ref[s] = table_row(source)
    return FramePlan(
        num_rows=row,
        ref_rows=torch.tensor(ref_rows, dtype=torch.long),
        dyn_rows=torch.tensor(dyn_rows, dtype=torch.long),
        dyn_source=torch.tensor([table_row(src) for src in dyn_source], dtype=torch.long),
        carried_streams=carried,
        last_ref=last_ref,
        num_recompute=num_recomputed(tokens, update_ratio),
        streams=list(streams),
    )


def run_block(layer_idx: int, x: Tensor, plan: FramePlan, ops: BlockOps) -> tuple[Tensor, Tensor | None]:
    """Run block `layer_idx` on an encoder batch x [rows, T, C] following `plan`, and store the
    newest reference of every stream. Returns the output and the recomputed positions of the
    non-reference rows ([len(dyn_rows), k] in `dyn_rows` order, or None when all are references).

    Non-reference rows are processed in groups sharing one reference, which is broadcast
    rather than copied per frame.
    """
    device = x.device
    table = [plan.streams[s].blocks[layer_idx] for s in plan.carried_streams]
    if len(plan.ref_rows) == len(x):
        out, batch_ref = ops.dense(x)
    else:
        out = torch.empty_like(x)
        batch_ref = None
        if len(plan.ref_rows):
            ref_rows = plan.ref_rows.to(device)
            ref_out, batch_ref = ops.dense(x[ref_rows])
            out.index_copy_(0, ref_rows, ref_out)
    if batch_ref is not None:
        batch_ref.keys = unit_keys(batch_ref.keys)
        table.extend(batch_ref.row(i) for i in range(len(plan.ref_rows)))
    index = None
    if len(plan.dyn_rows):
        index = torch.empty(len(plan.dyn_rows), plan.num_recompute, dtype=torch.long, device=device)
        for source in plan.dyn_source.unique().tolist():
            group = (plan.dyn_source == source).nonzero().flatten()
            rows = plan.dyn_rows[group].to(device)
            group_out, group_index = selective_block(x[rows], table[source], ops, plan.num_recompute)
            out.index_copy_(0, rows, group_out.to(out.dtype))
            index[group.to(device)] = group_index
    for s, row in plan.last_ref.items():
        if row >= len(plan.carried_streams):  # a newer reference was computed in this batch
            plan.streams[s].blocks[layer_idx] = table[row].clone()
    return out, index
