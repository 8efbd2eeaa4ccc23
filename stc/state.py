"""The one state object per patched model: config, per-stream Cacher/Pruner (or peer selector)
state, counters, the stage timer, and what the hooks of the current video call share."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from stc.cacher import FramePlan, RecomputeGate, StreamCache, plan_frames
from stc.config import STCConfig
from stc.peers import FrameContext, MethodConfig, Selection, Selector, TokenMerging
from stc.pruner import SCORERS, BudgetState, PrunerHistory, keep_positions
from stc.timing import StageTimer


PER_FRAME_EXTREMES = ("llm_tokens_kept_per_frame_min", "llm_tokens_kept_per_frame_max")  # not summed by Stats.add


@dataclass
class Stats:
    """What STC did since the current stream started (see `stc.stats`)."""

    frames: int = 0
    reference_frames: int = 0
    cut_references: int = 0  # reference frames forced by scene cuts (STCConfig.cut_threshold)
    drift_references: int = 0  # reference frames forced by drift (STCConfig.drift_threshold), cuts not counted
    vit_tokens: int = 0
    vit_tokens_recomputed: int = 0  # per layer, averaged over layers (reference frames: all their tokens)
    cached_tokens: int = 0  # tokens of the non-reference frames
    cached_tokens_recomputed: int = 0  # of which recomputed, per layer, averaged over layers
    llm_tokens_in: int = 0
    llm_tokens_kept: int = 0
    llm_tokens_kept_per_frame_min: int | None = None  # fewest tokens a frame kept in a selection (None: none yet)
    llm_tokens_kept_per_frame_max: int | None = None  # most tokens a frame kept in a selection

    def count_kept_per_frame(self, counts: list[int]) -> None:
        """Fold the kept-token counts of frames that went through a selection into min and max."""
        if counts:
            low, high = min(counts), max(counts)
            least, most = self.llm_tokens_kept_per_frame_min, self.llm_tokens_kept_per_frame_max
            self.llm_tokens_kept_per_frame_min = low if least is None else min(low, least)
            self.llm_tokens_kept_per_frame_max = high if most is None else max(high, most)

    def add(self, other: Stats) -> None:
        """Add `other`'s counts to these (of the per-frame kept extremes: the fewest and the most)."""
        for f in fields(self):
            if f.name not in PER_FRAME_EXTREMES:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.count_kept_per_frame([v for v in (other.llm_tokens_kept_per_frame_min, other.llm_tokens_kept_per_frame_max)
                                   if v is not None])

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["vit_reuse_ratio"] = 1.0 - self.vit_tokens_recomputed / self.vit_tokens if self.vit_tokens else 0.0
        out["llm_keep_ratio"] = self.llm_tokens_kept / self.llm_tokens_in if self.llm_tokens_in else 1.0
        out["llm_tokens_kept_per_frame"] = self.llm_tokens_kept / self.frames if self.frames else 0.0
        out["cached_recompute_share"] = self.cached_tokens_recomputed / self.cached_tokens if self.cached_tokens else 0.0
        out["references_per_100_frames"] = 100 * self.reference_frames / self.frames if self.frames else 0.0
        return out


@dataclass
class Stream:
    """One stream (batch row) of the video input: its Cacher references, its Pruner history (or
    a peer selector) and its own counters, so that a call encoding several streams at once still
    tells each stream what STC did for it."""

    cache: StreamCache = field(default_factory=StreamCache)
    history: PrunerHistory = field(default_factory=PrunerHistory)
    budget: BudgetState = field(default_factory=BudgetState)  # the Pruner's adaptive budget (pruner_budget "adaptive")
    selector: Selector | None = None  # a peer method's per-stream state
    stats: Stats = field(default_factory=Stats)  # this stream's share of STCState.stats


@dataclass(slots=True)
class VideoCall:
    """What the hooks of one call that carries video share: set while the vision encoder runs on
    its frames (`encoding`, the Cacher's `plan`, ToMe's `token_merging`), measured there
    (`recomputed`, `reused_rows`, `vit_attention`), and left by the selection and prompt pruning
    that follow (`kept`, `keep_mask`), where tests and the engine read them. `STCState.video_pass`
    starts a fresh one, so nothing of an earlier call is read as this one's. Slots: a hook cannot
    add an undeclared field."""

    encoding: bool = False  # True while the vision encoder runs on the video frames
    plan: FramePlan | None = None  # the Cacher's plan, while the encoder runs (None: Cacher off)
    token_merging: TokenMerging | None = None  # ToMe's state while the encoder runs (set by the adapter)
    vit_attention: Tensor | None = None  # [rows, T] attention each patch received in the last layer (VisionZip)
    recomputed: dict[int, Tensor] = field(default_factory=dict)  # layer -> positions the Cacher recomputed
    reused_rows: Tensor | None = None  # rows that reused a reference (`recomputed`'s row order); None: Cacher off
    recompute_share: Tensor | None = None  # [rows, T] share of layers that recomputed each patch; NaN rows: references
    kept: list[list[Tensor]] = field(default_factory=list)  # per stream, per frame: kept positions of the selection
    keep_mask: Tensor | None = None  # [B, L] bool: which positions of the prompt's input_ids were kept


class STCState:
    """Shared by an adapter's hooks. Streams are indexed by batch row of the video input.

    Outside `streaming` (the `stc.stream` context), every encoder call that carries video starts
    new streams; inside it, the Cacher's references and the Pruner's (or a peer selector's)
    history carry over. `config` is an STCConfig or a peer method's MethodConfig; `call` is what
    the hooks of the current (or last) video call share.
    """

    def __init__(self, config: STCConfig | MethodConfig):
        self.config = config
        self.streaming = False
        self.streams: list[Stream] = []
        self.stats = Stats()
        self.timer = StageTimer()  # enabled by benchmarks: vit / projector / selection seconds
        self.call = VideoCall()

    def reset(self) -> None:
        """Forget every stream: the next frame is frame 0 of a new stream."""
        self.streams = []
        self.stats = Stats()
        self.call = VideoCall()

    def _streams(self, count: int) -> list[Stream]:
        while len(self.streams) < count:
            self.streams.append(self.new_stream(len(self.streams)))
        return self.streams[:count]

    def new_stream(self, index: int = 0) -> Stream:
        """A fresh stream for batch row `index` under this config (frame 0, no reference)."""
        if self.peer is not None:
            return Stream(selector=self.peer.make_selector(index))
        return Stream(history=PrunerHistory(self.config.history_window))

    @property
    def peer(self) -> MethodConfig | None:
        """The peer method's config, or None when STC runs."""
        return self.config if isinstance(self.config, MethodConfig) else None

    @property
    def cacher_active(self) -> bool:
        return self.peer is None and self.config.cacher and self.config.cache_interval > 1

    @property
    def selects(self) -> bool:
        """True when visual tokens go through a selection step (STC-Pruner or a peer selector)."""
        return self.peer is not None or self.config.prunes

    @property
    def merges_vit_tokens(self) -> bool:
        """True when ToMe runs inside the vision encoder."""
        return self.peer is not None and self.peer.selector.vit_side

    @property
    def context_needs(self) -> frozenset[str]:
        """FrameContext fields the selection reads (adapters provide them): a peer selector's, or
        the Cacher's recompute share for STC-Pruner's cacher_change scorer while the Cacher runs."""
        if self.peer is not None:
            return self.peer.selector.needs
        if self.config.prunes and SCORERS[self.config.pruner_scoring].takes_recomputed and self.cacher_active:
            return frozenset({"recomputed"})
        return frozenset()

    @contextmanager
    def video_pass(self, frames_per_stream: list[int], tokens: int, geometry: tuple):
        """Around one vision-encoder call on video frames (stream-major rows): plan which frames
        are references, let the blocks follow the plan, then advance the streams."""
        if not self.streaming:
            self.reset()
        streams = self._streams(len(frames_per_stream))
        plan = None
        if self.cacher_active:
            plan = plan_frames(
                [s.cache for s in streams],
                frames_per_stream,
                self.config.cache_interval,
                self.config.update_ratio,
                tokens,
                geometry,
                compiled=self.config.compile,
                cut_threshold=self.config.cut_threshold,
                drift_threshold=self.config.drift_threshold,
                gate=_gate(self.config),
                share_selection=self.config.share_selection,
                refresh_tokens=self.config.refresh_tokens,
            )
        call = self.call = VideoCall(encoding=True, plan=plan)
        try:
            yield plan
        finally:
            call.reused_rows = None if plan is None else plan.dyn_rows  # final: after scene cuts were detected
            call.encoding, call.plan = False, None
            merging, call.token_merging = call.token_merging, None
        if plan is not None and "recomputed" in self.context_needs:
            call.recompute_share = recompute_share(plan, call.recomputed, sum(frames_per_stream), tokens)
        rows = _stream_rows(plan, frames_per_stream)
        self.stats.add(_vit_counts(plan, merging, (sum(f for f, _ in rows), sum(r for _, r in rows)), tokens))
        for stream, counts in zip(streams, rows):
            stream.stats.add(_vit_counts(plan, merging, counts, tokens))
        if plan is not None:
            self.stats.cut_references += plan.cuts
            self.stats.drift_references += plan.drifts
            for s, phase in plan.phases.items():
                streams[s].cache.phase = phase
            for s, count in plan.stream_cuts.items():
                streams[s].stats.cut_references += count
            for s, count in plan.stream_drifts.items():
                streams[s].stats.drift_references += count
        for stream, count in zip(streams, frames_per_stream):
            stream.cache.frames_seen += count
            stream.cache.geometry = geometry if self.cacher_active else None

    def count_llm_tokens(self, tokens_in: Sequence[int], tokens_kept: Sequence[int]) -> None:
        """Add LLM tokens offered and kept, entry s for stream s, to stream s's counters and the totals."""
        streams = self._streams(len(tokens_in))
        for stream, offered, kept in zip(streams, tokens_in, tokens_kept, strict=True):
            stream.stats.llm_tokens_in += offered
            stream.stats.llm_tokens_kept += kept
        self.stats.llm_tokens_in += sum(tokens_in)
        self.stats.llm_tokens_kept += sum(tokens_kept)

    def prune(self, frame_tokens: Tensor) -> Tensor:
        """Kept positions [B, F, k] for visual tokens [B, F, n, D] (row b = stream b, frames in
        time order) under a fixed per-frame budget (STC-Pruner, peers in budget mode)."""
        return torch.stack([torch.stack(s.positions) for s in self.select_streams(list(frame_tokens))])

    def select_streams(self, stream_tokens: list[Tensor], contexts: list[FrameContext] | None = None) -> list[Selection]:
        """The LLM's tokens for each stream's visual tokens [F_s, n_s, D] (entry s = stream s, frames
        in time order; frame and token counts may differ between streams), by STC-Pruner or the
        peer selector, with `contexts[s]` for selectors that need one (`context_needs`). Updates
        each stream's history, `call.kept` and the LLM token counters."""
        streams = self._streams(len(stream_tokens))
        contexts = [None] * len(stream_tokens) if contexts is None else contexts
        with self.timer.section("selection"):
            if self.peer is not None:
                selections = [s.selector.select(t, c) for t, s, c in zip(stream_tokens, streams, contexts)]
            else:
                selections = [self._prune(t, s, c) for t, s, c in zip(stream_tokens, streams, contexts)]
        self.call.kept = [s.positions for s in selections]
        for stream, selection in zip(streams, selections):
            counts = [len(p) for p in selection.positions]
            stream.stats.count_kept_per_frame(counts)
            self.stats.count_kept_per_frame(counts)
        offered = [t.shape[0] * t.shape[1] for t in stream_tokens]
        self.count_llm_tokens([0] * len(selections), [s.kept - n for s, n in zip(selections, offered)])
        return selections

    def _prune(self, tokens: Tensor, stream: Stream, context: FrameContext | None) -> Selection:
        """STC-Pruner on one stream's frames [F, n, D]: a fixed or adaptive per-frame count."""
        config = self.config
        budget = stream.budget if config.pruner_budget == "adaptive" else None
        recomputed = context.recomputed if context is not None else None
        keep = keep_positions(tokens, stream.history, config.keep_ratio, scoring=config.pruner_scoring, budget=budget,
                              budget_floor=config.budget_floor, recomputed=recomputed, **config.pruner_knobs)
        return Selection(keep, [frame[index] for frame, index in zip(tokens, keep)])


def recompute_share(plan: FramePlan, recomputed: dict[int, Tensor | None], rows: int, tokens: int) -> Tensor:
    """[rows, tokens]: for each encoder row, the share of the blocks that recomputed each patch
    (`VideoCall.recomputed`: per block the positions [len(dyn_rows), k] of the non-reference rows);
    NaN for the reference rows, which every block computed densely."""
    layers = [index for index in recomputed.values() if index is not None]
    device = layers[0].device if layers else torch.device("cpu")
    ref_rows, dyn_rows, _ = plan.indices(device)
    share = torch.zeros(rows, tokens, device=device)
    for index in layers:
        share[dyn_rows] += torch.zeros(len(dyn_rows), tokens, device=device).scatter_(1, index, 1.0)
    if layers:
        share /= len(layers)
    share[ref_rows] = float("nan")
    return share


def _stream_rows(plan: FramePlan | None, frames_per_stream: list[int]) -> list[tuple[int, int]]:
    """(frames, reference frames) of each stream of an encoder call (rows are stream-major)."""
    if plan is None:
        return [(count, count) for count in frames_per_stream]
    stream_of_row = torch.repeat_interleave(torch.arange(len(frames_per_stream)), torch.tensor(frames_per_stream))
    refs = torch.bincount(stream_of_row[plan.ref_rows], minlength=len(frames_per_stream)).tolist()
    return list(zip(frames_per_stream, refs))


def _vit_counts(plan: FramePlan | None, merging: TokenMerging | None, rows: Sequence[int], tokens: int) -> Stats:
    """The ViT counters of `rows` = (frames, reference frames) of one encoder call, whether the
    whole call or one stream's rows: the tokens the layers processed (ToMe: averaged over layers)
    or, with the Cacher, the reference frames' tokens plus what the cached frames recomputed
    (the blocks' counts per cached row, averaged over blocks)."""
    frames, refs = rows
    stats = Stats(frames=frames, reference_frames=refs, vit_tokens=frames * tokens)
    if merging is not None:
        stats.vit_tokens_recomputed = round(frames * merging.mean_tokens)
        return stats
    cached_rows = frames - refs
    cached = cached_rows * (plan.num_recompute if plan is not None else tokens)
    if plan is not None and plan.recomputed:  # per block: tokens per cached row x this call's cached rows
        per_row = sum(n // len(plan.dyn_rows) for n in plan.recomputed.values())
        cached = round(cached_rows * per_row / len(plan.recomputed))
    stats.vit_tokens_recomputed = refs * tokens + cached
    stats.cached_tokens = cached_rows * tokens
    stats.cached_tokens_recomputed = cached
    return stats


def _gate(config: STCConfig) -> RecomputeGate | None:
    """The Cacher's change gate (STCConfig.change_threshold), or None when it is off."""
    if config.change_threshold is None:
        return None
    return RecomputeGate(config.change_threshold, config.min_update_ratio, config.update_ratio, config.recompute_buckets)


__all__ = ["STCState", "Stats", "VideoCall"]
