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
    """Cached tensors of one block for one or more reference frames, each [R, T, C]."""

    keys: Tensor
    values: Tensor
    attn_out: Tensor
    mlp_out: Tensor

    def rows(self, index: Tensor) -> BlockReference:
        return BlockReference(*(t.index_select(0, index) for t in self.astuple()))

    def astuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.keys, self.values, self.attn_out, self.mlp_out

    @staticmethod
    def cat(parts: Sequence[BlockReference]) -> BlockReference:
        if len(parts) == 1:
            return parts[0]
        return BlockReference(*(torch.cat(ts, dim=0) for ts in zip(*(p.astuple() for p in parts))))


@dataclass
class BlockOps:
    """How to run the pieces of one pre-LN block (x + Attn(LN1 x); h + MLP(LN2 h)).

    `dense(x)` runs the model's own block on reference frames and returns its output together
    with the captured `BlockReference`. `query`, `value` and `attend` receive `index` [F, k], the
    positions of the recomputed tokens, for encoders whose projections depend on position
    (rotary embeddings, window attention).
    """

    dense: Callable[[Tensor], tuple[Tensor, BlockReference]]
    norm1: Callable[[Tensor], Tensor]
    key: Callable[[Tensor], Tensor]
    query: Callable[[Tensor, Tensor], Tensor]
    value: Callable[[Tensor, Tensor], Tensor]
    attend: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    norm2: Callable[[Tensor], Tensor]
    mlp: Callable[[Tensor], Tensor]


def num_recomputed(tokens: int, update_ratio: float) -> int:
    """k = max(1, floor(r·T)): tokens recomputed per layer on a non-reference frame."""
    return min(tokens, max(1, math.floor(update_ratio * tokens + 1e-9)))


def lowest_similarity(keys: Tensor, ref_keys: Tensor, k: int) -> Tensor:
    """Positions [F, k] (ascending) of the k tokens whose key has the lowest cosine similarity
    to the reference key at the same position. keys, ref_keys: [F, T, C]."""
    similarity = F.cosine_similarity(keys.float(), ref_keys.float(), dim=-1)
    index = torch.topk(similarity, k, dim=-1, largest=False, sorted=False).indices
    return index.sort(dim=-1).values


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _replace_rows(base: Tensor, index: Tensor, rows: Tensor) -> Tensor:
    return base.scatter(1, index.unsqueeze(-1).expand(-1, -1, base.shape[-1]), rows.to(base.dtype))


def selective_block(x: Tensor, ref: BlockReference, ops: BlockOps, k: int) -> tuple[Tensor, Tensor]:
    """One block on non-reference frames x [F, T, C] against their references (rows aligned).

    Returns the block output [F, T, C] and the recomputed positions [F, k].
    """
    h = ops.norm1(x)
    keys = ops.key(h)
    index = lowest_similarity(keys, ref.keys, k)
    h_dyn = _gather_rows(h, index)
    q_dyn = ops.query(h_dyn, index)
    v_mix = _replace_rows(ref.values, index, ops.value(h_dyn, index))
    attn = _replace_rows(ref.attn_out, index, ops.attend(q_dyn, keys, v_mix, index))
    h = x + attn
    mlp = _replace_rows(ref.mlp_out, index, ops.mlp(ops.norm2(_gather_rows(h, index))))
    return h + mlp, index


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
    non-reference rows ([len(dyn_rows), k], or None when every row was a reference)."""
    device = x.device
    ref_rows, dyn_rows = plan.ref_rows.to(device), plan.dyn_rows.to(device)
    parts = [plan.streams[s].blocks[layer_idx] for s in plan.carried_streams]
    if len(ref_rows) == len(x):
        out, batch_ref = ops.dense(x)
        parts.append(batch_ref)
    else:
        out = torch.empty_like(x)
        if len(ref_rows):
            ref_out, batch_ref = ops.dense(x.index_select(0, ref_rows))
            out.index_copy_(0, ref_rows, ref_out)
            parts.append(batch_ref)
    table = BlockReference.cat(parts)
    index = None
    if len(dyn_rows):
        dyn_out, index = selective_block(
            x.index_select(0, dyn_rows), table.rows(plan.dyn_source.to(device)), ops, plan.num_recompute
        )
        out.index_copy_(0, dyn_rows, dyn_out.to(out.dtype))
    for s, row in plan.last_ref.items():
        if row >= len(plan.carried_streams):  # a newer reference was computed in this batch
            plan.streams[s].blocks[layer_idx] = table.rows(torch.tensor([row], device=device))
    return out, index
