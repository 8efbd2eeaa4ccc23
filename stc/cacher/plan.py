"""STC-Cacher's plan: which frames of an encoder batch are references (periodic schedule, scene
cuts) and which tokens a cached frame recomputes (key similarity to the reference).

Pure tensor code (no transformers import). Everything here is decided once per encoder call (on
the host) or is a fixed set of device ops: the blocks (`stc.cacher.blocks`) never synchronise.
Spec: ../shared/docs/stc-algorithm.md ("STC-Cacher").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from stc.cacher.blocks import BlockOps, BlockReference

def num_recomputed(tokens: int, update_ratio: float) -> int:
    """k = max(1, floor(r·T)): tokens recomputed per layer on a non-reference frame."""
    return min(tokens, max(1, math.floor(update_ratio * tokens + 1e-9)))



def _at_least_float32(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def unit_keys(keys: Tensor) -> Tensor:
    return F.normalize(keys.float(), dim=-1).to(keys.dtype)


def grouped(x: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    """Frames x [F, ...] and their references [R, ...] (R divides F: reference i serves the i-th
    run of F/R consecutive frames; R = 1 shares one, R = F gives one each) as views that
    broadcast against each other: [R, F/R, ...] and [R, 1, ...] (views: no copy of a contiguous x)."""
    return x.reshape(ref.shape[0], -1, *x.shape[1:]), ref.unsqueeze(1)


def key_similarity(keys: Tensor, ref_unit_keys: Tensor) -> Tensor:
    """Cosine similarity [F, T] (float32 or float64) of keys [F, T, C] to unit-norm reference
    keys [R, T, C] at the same positions (R divides F, see `grouped`)."""
    keys4, ref4 = grouped(keys, ref_unit_keys)
    dot = _at_least_float32(torch.linalg.vecdot(keys4, ref4)).flatten(0, 1)
    return dot / _at_least_float32(torch.linalg.vector_norm(keys, dim=-1)).clamp_min(1e-12)


def lowest_similarity(keys: Tensor, ref_unit_keys: Tensor, k: int) -> Tensor:
    """Positions [F, k] (ascending) of the k tokens whose key has the lowest cosine similarity
    to the reference key at the same position. keys [F, T, C]; ref_unit_keys [R, T, C] with
    unit norm (R divides F, see `grouped`)."""
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


class SegmentSelection:
    """Like `lowest_similarity`, but per attention segment: the tokens of each frame are split
    into consecutive segments of `sizes` (the same for every frame) and segment s recomputes its
    `quotas[s]` least similar tokens. Built once per layout, so that selecting is a fixed set of
    device ops (one sort by similarity, one stable sort by segment, one gather) with no host
    synchronisation. Calling it returns positions [F, sum(quotas)], ascending."""

    def __init__(self, sizes: Sequence[int], quotas: Sequence[int], device=None):
        sizes_t = torch.tensor(list(sizes), device=device)
        quotas_t = torch.tensor(list(quotas), device=device)
        self.segment = torch.repeat_interleave(torch.arange(len(sizes_t), device=device), sizes_t)  # [T]
        starts = sizes_t.cumsum(0) - sizes_t
        rank = torch.arange(len(self.segment), device=device) - starts[self.segment]  # rank within the segment
        # In the order "grouped by segment, ascending similarity within one", the chosen slots:
        self.slots = (rank < quotas_t[self.segment]).nonzero().flatten()

    def __call__(self, keys: Tensor, ref_unit_keys: Tensor, k: int) -> Tensor:
        order = key_similarity(keys, ref_unit_keys).argsort(dim=-1)  # ascending similarity
        order = order.gather(1, self.segment[order].argsort(dim=-1, stable=True))  # grouped by segment
        return order.index_select(1, self.slots).sort(dim=-1).values



@dataclass
class StreamCache:
    """Reference state of one stream: frames seen so far, the frame its reference schedule counts
    from (the last scene cut), and each block's last reference."""

    frames_seen: int = 0
    phase: int = 0
    geometry: tuple | None = None
    blocks: dict[int, BlockReference] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes of the references this stream carries (one per block)."""
        return sum(t.numel() * t.element_size() for ref in self.blocks.values() for t in ref.astuple())

    def clear(self) -> None:
        self.frames_seen = 0
        self.phase = 0
        self.geometry = None
        self.blocks.clear()


CUT_SAMPLE_STRIDE = 4  # scene-cut detection reads every 4th token's first-block key


@dataclass
class FramePlan:
    """Which rows of one encoder batch are references and what each other row reuses.

    The reference table of a block is [carried references of `carried_streams`] followed by the
    references computed in this batch (in `ref_rows` order); `dyn_source[i]` is the table row
    that non-reference row `dyn_rows[i]` is compared against. Everything a block needs is decided
    here, on the host, once per encoder call: the blocks themselves never synchronise.
    """

    num_rows: int
    ref_rows: Tensor
    dyn_rows: Tensor
    dyn_source: Tensor
    carried_streams: list[int]
    last_ref: dict[int, int]  # stream -> table row of its newest reference
    num_recompute: int
    streams: list[StreamCache]
    # (first table row, G) when the non-reference rows form G equal runs of consecutive rows whose
    # references are table rows first..first+G-1, all computed in this batch (or G = 1): then the
    # references are a view of the table, broadcast per run, never gathered
    runs: tuple[int, int] | None = None
    compiled: bool = False  # run the blocks through `compiled_blocks` (STCConfig.compile)
    phases: dict[int, int] = field(default_factory=dict)  # stream -> frame its schedule counts from
    cuts: int = 0  # references forced by scene cuts
    # set while scene cuts are still to be detected: plans again given the first block's
    # similarities (see `detect_cuts`)
    replan: Callable[[Tensor, Tensor], FramePlan] | None = field(default=None, repr=False)
    _on_device: dict = field(default_factory=dict, repr=False)

    @property
    def all_references(self) -> bool:
        return len(self.dyn_rows) == 0

    @property
    def all_dynamic(self) -> bool:
        return len(self.ref_rows) == 0

    def detect_cuts(self, x: Tensor, ops: BlockOps) -> None:
        """Before the first block: turn every frame whose first-block keys have a mean cosine
        similarity to its reference's below the threshold into a reference (a scene cut),
        restarting its stream's schedule there. The mean is estimated on every
        `CUT_SAMPLE_STRIDE`-th token (the key projection is per token). One host synchronisation
        per encoder call."""
        with torch.no_grad():  # a decision, not part of the model's output: never tracked by autograd
            sampled = F.normalize(ops.key(ops.norm1(x[:, ::CUT_SAMPLE_STRIDE])).float(), dim=-1)  # [rows, T/stride, C]
            unit = sampled.flatten(1)  # the mean over tokens of per-token cosines is one dot product / tokens
            carried = [self.streams[s].blocks[0].keys[:, ::CUT_SAMPLE_STRIDE].flatten(1).float() for s in self.carried_streams]
            similarity = (unit @ torch.cat([unit, *carried]).T / sampled.shape[1]).cpu()  # one host synchronisation
        fresh = self.replan(*similarity.split([len(unit), similarity.shape[1] - len(unit)], dim=1))
        for name in ("ref_rows", "dyn_rows", "dyn_source", "last_ref", "runs", "phases", "cuts"):
            setattr(self, name, getattr(fresh, name))
        self._on_device.clear()
        self.replan = None

    def indices(self, device) -> tuple[Tensor, Tensor, Tensor]:
        """(ref_rows, dyn_rows, dyn_source) on `device`, copied there once per plan."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = tuple(t.to(device) for t in (self.ref_rows, self.dyn_rows, self.dyn_source))
        return self._on_device[key]


def plan_frames(
    streams: Sequence[StreamCache],
    frames_per_stream: Sequence[int],
    interval: int,
    update_ratio: float,
    tokens: int,
    geometry: tuple,
    compiled: bool = False,
    cut_threshold: float | None = None,
    similarity: tuple[Tensor, Tensor] | None = None,
) -> FramePlan:
    """Plan an encoder batch holding `frames_per_stream[s]` consecutive frames of stream s,
    stream-major. Frame t of a stream (0-based since its start) is a reference when
    (t - phase) mod interval == 0, phase being the stream's last scene cut (0 if none), or when
    the stream has no usable reference yet.

    With `cut_threshold`, the plan defers to `FramePlan.detect_cuts`, which calls this again with
    `similarity`: the mean cosine similarity of the first block's keys between the batch's rows
    [rows, rows] and to the carried references [rows, carried]; a frame below the threshold to
    its reference becomes a reference (a cut) and its stream's phase moves to it."""
    dyn_rows, dyn_source, carried, last_ref = [], [], [], {}
    carried_slot = {}
    for s, stream in enumerate(streams):
        if stream.geometry == geometry and stream.blocks:
            carried_slot[s] = len(carried)
            carried.append(s)
    row = cuts = 0
    batch_refs = []  # (stream, row)
    newest: dict[int, tuple[str, int]] = {s: ("carried", carried_slot[s]) for s in carried_slot}
    phases = {s: stream.phase for s, stream in enumerate(streams)}

    def similar(row: int, source: tuple[str, int]) -> bool:
        kind, i = source
        within, to_carried = similarity
        value = to_carried[row, i] if kind == "carried" else within[row, batch_refs[i][1]]
        return float(value.detach()) >= cut_threshold

    for s, count in enumerate(frames_per_stream):
        t0 = streams[s].frames_seen
        for i in range(count):
            t = t0 + i
            periodic = (t - phases[s]) % interval == 0 or s not in newest
            if not periodic and similarity is not None and not similar(row, newest[s]):
                phases[s], periodic = t, True
                cuts += 1
            if periodic:
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
    sources = [table_row(src) for src in dyn_source]
    return FramePlan(
        num_rows=row,
        ref_rows=torch.tensor(ref_rows, dtype=torch.long),
        dyn_rows=torch.tensor(dyn_rows, dtype=torch.long),
        dyn_source=torch.tensor(sources, dtype=torch.long),
        carried_streams=carried,
        last_ref=last_ref,
        num_recompute=num_recomputed(tokens, update_ratio),
        streams=list(streams),
        runs=_runs(sources, len(carried)),
        compiled=compiled,
        phases=phases,
        cuts=cuts,
        replan=_replanner(streams, frames_per_stream, interval, update_ratio, tokens, geometry, compiled, cut_threshold)
        if cut_threshold is not None and similarity is None and dyn_rows else None,
    )


def _replanner(*arguments) -> Callable[[Tensor, Tensor], FramePlan]:
    def replan(within: Tensor, to_carried: Tensor) -> FramePlan:
        return plan_frames(*arguments, similarity=(within, to_carried))

    return replan


def _runs(sources: list[int], carried: int) -> tuple[int, int] | None:
    """FramePlan.runs for the table rows `sources` of the non-reference rows (in row order)."""
    if not sources:
        return None
    first, count = sources[0], len(set(sources))
    size = len(sources) // count
    expected = [first + i // size for i in range(len(sources))]
    if sources != expected or (count > 1 and first < carried):
        return None
    return first, count


