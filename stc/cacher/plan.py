"""STC-Cacher's plan: which frames of an encoder batch are references (periodic schedule, scene
cuts) and which tokens a cached frame recomputes (key similarity to the reference).

Pure tensor code (no transformers import). Everything here is decided once per encoder call (on
the host) or is a fixed set of device ops: the blocks (`stc.cacher.blocks`) never synchronise.
Spec: ../shared/docs/stc-algorithm.md ("STC-Cacher").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.cacher.gating import RecomputeGate, num_recomputed

if TYPE_CHECKING:
    from stc.cacher.blocks import BlockOps, BlockReference

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
    from (the last scene cut; the last reference with drift-triggered references), and each
    block's last reference."""

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


CUT_SAMPLE_STRIDE = 4  # scene-cut / drift detection and the change gate read every 4th token's first-block key


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
    drifts: int = 0  # references forced by drift (STCConfig.drift_threshold), cuts not counted
    stream_cuts: dict[int, int] = field(default_factory=dict)  # stream -> its share of `cuts`
    stream_drifts: dict[int, int] = field(default_factory=dict)  # stream -> its share of `drifts`
    # tokens each non-reference row recomputes in blocks that select over the whole frame, when
    # the change gate chose it (STCConfig.change_threshold); None: `num_recompute`
    gated_recompute: int | None = None
    share_selection: bool = False  # later blocks reuse the first block's recomputed positions
    refresh_tokens: bool = False  # a recomputed token refreshes its entry of the stream's reference
    shared_index: Tensor | None = field(default=None, repr=False)  # the first block's positions, shared
    recomputed: dict[int, int] = field(default_factory=dict)  # block -> tokens recomputed on non-reference rows
    # stream -> position in dyn_rows of its last row compared with its newest reference (refresh)
    refresh_rows: dict[int, int] = field(default_factory=dict)
    # set while the first block's similarities are still to be read (scene cuts, drift, the change
    # gate): plans again given them (see `detect_cuts`)
    replan: Callable[..., FramePlan] | None = field(default=None, repr=False)
    gate: RecomputeGate | None = field(default=None, repr=False)
    _on_device: dict = field(default_factory=dict, repr=False)

    @property
    def all_references(self) -> bool:
        return len(self.dyn_rows) == 0

    @property
    def all_dynamic(self) -> bool:
        return len(self.ref_rows) == 0

    def detect_cuts(self, x: Tensor, ops: BlockOps) -> None:
        """Before the first block: turn every frame whose first-block keys have a mean cosine
        similarity to its reference's below the threshold into a reference (a scene cut, or
        drift), restarting its stream's schedule there; with the change gate, also count each
        frame's changed tokens and set `gated_recompute`. Estimated on every
        `CUT_SAMPLE_STRIDE`-th token (the key projection is per token). One host synchronisation
        per encoder call."""
        with torch.no_grad():  # a decision, not part of the model's output: never tracked by autograd
            sampled = F.normalize(ops.key(ops.norm1(x[:, ::CUT_SAMPLE_STRIDE])).float(), dim=-1)  # [rows, T/stride, C]
            carried = [self.streams[s].blocks[0].keys[:, ::CUT_SAMPLE_STRIDE].float() for s in self.carried_streams]
            rows = len(sampled)
            if self.gate is None:  # the mean over tokens of per-token cosines is one dot product / tokens
                unit = sampled.flatten(1)
                similarity = (unit @ torch.cat([unit, *[c.flatten(1) for c in carried]]).T / sampled.shape[1]).cpu()  # one sync
                fresh = self.replan(*similarity.split([rows, similarity.shape[1] - rows], dim=1))
            else:  # per-token cosines [rows, candidates, T/stride]: their mean, and the share of changed tokens
                cosines = torch.einsum("rtc,qtc->rqt", sampled, torch.cat([sampled, *carried]))
                both = torch.stack([cosines.mean(-1), self.gate.changed(cosines).float().mean(-1)]).cpu()  # one sync
                similarity, changed = both.split([rows, both.shape[2] - rows], dim=2)
                fresh = self.replan(similarity[0], changed[0], changed=(similarity[1], changed[1]))
        for name in ("ref_rows", "dyn_rows", "dyn_source", "last_ref", "runs", "phases", "cuts", "drifts", "stream_cuts",
                     "stream_drifts", "gated_recompute", "refresh_rows"):
            setattr(self, name, getattr(fresh, name))
        self._on_device.clear()
        self.replan = None

    def recompute_for(self, ops: BlockOps) -> int:
        """Tokens a non-reference row recomputes in a block: the change gate's budget where the
        block selects over the whole frame (its `select` is None), else `num_recompute` (a
        segmented selection is built for that budget)."""
        if ops.select is None and self.gated_recompute is not None:
            return self.gated_recompute
        return self.num_recompute

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
    drift_threshold: float | None = None,
    gate: RecomputeGate | None = None,
    share_selection: bool = False,
    refresh_tokens: bool = False,
    changed: tuple[Tensor, Tensor] | None = None,
) -> FramePlan:
    """Plan an encoder batch holding `frames_per_stream[s]` consecutive frames of stream s,
    stream-major. Frame t of a stream (0-based since its start) is a reference when
    (t - phase) mod interval == 0, phase being the stream's last scene cut (0 if none), or when
    the stream has no usable reference yet. With `drift_threshold` the phase moves to every
    reference and `interval` is the most frames a reference serves (N_max).

    With `cut_threshold`, `drift_threshold` or `gate`, the plan defers to `FramePlan.detect_cuts`,
    which calls this again with `similarity`: the mean cosine similarity of the first block's
    keys between the batch's rows [rows, rows] and to the carried references [rows, carried]; a
    frame below `cut_threshold` to its reference becomes a reference (a cut), one below
    `drift_threshold` too (drift), and its stream's phase moves to it. With `gate`, `changed`
    holds the shares of changed tokens in the same layout, and the budget of the non-reference
    rows is the gate's bucket for the largest share among them (`RecomputeGate.budget`)."""
    dyn_rows, dyn_source, dyn_streams, carried, last_ref = [], [], [], [], {}
    carried_slot = {}
    for s, stream in enumerate(streams):
        if stream.geometry == geometry and stream.blocks:
            carried_slot[s] = len(carried)
            carried.append(s)
    row = cuts = drifts = 0
    stream_cuts: dict[int, int] = {}
    stream_drifts: dict[int, int] = {}
    batch_refs = []  # (stream, row)
    newest: dict[int, tuple[str, int]] = {s: ("carried", carried_slot[s]) for s in carried_slot}
    phases = {s: stream.phase for s, stream in enumerate(streams)}
    most_changed = 0.0  # largest share of changed tokens among the non-reference rows

    def lookup(table: tuple[Tensor, Tensor], row: int, source: tuple[str, int]) -> float:
        kind, i = source
        within, to_carried = table
        return float((to_carried[row, i] if kind == "carried" else within[row, batch_refs[i][1]]).detach())

    for s, count in enumerate(frames_per_stream):
        t0 = streams[s].frames_seen
        for i in range(count):
            t = t0 + i
            if s not in newest:
                periodic = True
            elif drift_threshold is not None:
                periodic = t - phases[s] >= interval
            else:
                periodic = (t - phases[s]) % interval == 0
            if not periodic and similarity is not None:
                value = lookup(similarity, row, newest[s])
                if cut_threshold is not None and value < cut_threshold:
                    periodic, cuts, phases[s] = True, cuts + 1, t
                    stream_cuts[s] = stream_cuts.get(s, 0) + 1
                elif drift_threshold is not None and value < drift_threshold:
                    periodic, drifts = True, drifts + 1
                    stream_drifts[s] = stream_drifts.get(s, 0) + 1
            if periodic:
                if drift_threshold is not None:
                    phases[s] = t
                batch_refs.append((s, row))
                newest[s] = ("batch", len(batch_refs) - 1)
            else:
                if changed is not None:
                    most_changed = max(most_changed, lookup(changed, row, newest[s]))
                dyn_rows.append(row)
                dyn_source.append(newest[s])
                dyn_streams.append(s)
            row += 1
    ref_rows = [r for _, r in batch_refs]

    def table_row(source: tuple[str, int]) -> int:
        kind, i = source
        return i if kind == "carried" else len(carried) + i

    for s, source in newest.items():
        last_ref[s] = table_row(source)
    sources = [table_row(src) for src in dyn_source]
    refresh_rows = {s: j for j, s in enumerate(dyn_streams) if sources[j] == last_ref[s]} if refresh_tokens else {}
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
        drifts=drifts,
        stream_cuts=stream_cuts,
        stream_drifts=stream_drifts,
        gated_recompute=gate.budget(most_changed, tokens) if gate is not None and changed is not None else None,
        share_selection=share_selection,
        refresh_tokens=refresh_tokens,
        refresh_rows=refresh_rows,
        gate=gate,
        replan=functools.partial(_replan, streams, frames_per_stream, interval, update_ratio, tokens, geometry,
                                 compiled=compiled, cut_threshold=cut_threshold, drift_threshold=drift_threshold,
                                 gate=gate, share_selection=share_selection, refresh_tokens=refresh_tokens)
        if (cut_threshold is not None or drift_threshold is not None or gate is not None) and similarity is None and dyn_rows
        else None,
    )


def _replan(*arguments, changed: tuple[Tensor, Tensor] | None = None, **options) -> FramePlan:
    """FramePlan.replan: `plan_frames` again, given (within, to_carried) similarities."""
    *arguments, within, to_carried = arguments
    return plan_frames(*arguments, similarity=(within, to_carried), changed=changed, **options)


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


