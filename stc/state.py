"""The one state object per patched model: config, per-stream Cacher/Pruner state, counters."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from .cacher import FramePlan, StreamCache, plan_frames
from .config import STCConfig
from .pruner import PrunerHistory, prune_frames
from .timing import StageTimer


@dataclass
class Stats:
    """What STC did since the current stream started (see `stc.stats`)."""

    frames: int = 0
    reference_frames: int = 0
    vit_tokens: int = 0
    vit_tokens_recomputed: int = 0
    llm_tokens_in: int = 0
    llm_tokens_kept: int = 0

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["vit_reuse_ratio"] = 1.0 - self.vit_tokens_recomputed / self.vit_tokens if self.vit_tokens else 0.0
        out["llm_keep_ratio"] = self.llm_tokens_kept / self.llm_tokens_in if self.llm_tokens_in else 1.0
        return out


@dataclass
class Stream:
    cache: StreamCache = field(default_factory=StreamCache)
    history: PrunerHistory = field(default_factory=PrunerHistory)


class STCState:
    """Shared by an adapter's hooks. Streams are indexed by batch row of the video input.

    Outside `streaming` (the `stc.stream` context), every encoder call that carries video starts
    new streams; inside it, the Cacher's references and the Pruner's history carry over.
    """

    def __init__(self, config: STCConfig):
        self.config = config
        self.streaming = False
        self.streams: list[Stream] = []
        self.stats = Stats()
        self.plan: FramePlan | None = None  # set while the vision encoder runs on video frames
        self.last_recomputed: dict[int, Tensor] = {}  # layer -> recomputed positions, last pass
        self.last_kept: list[Tensor] = []  # per stream: kept positions [F, k] of the last Pruner call
        self.timer = StageTimer()  # enabled by benchmarks: vit / projector / selection seconds

    def reset(self) -> None:
        """Forget every stream: the next frame is frame 0 of a new stream."""
        self.streams = []
        self.stats = Stats()
        self.last_recomputed = {}
        self.last_kept = []

    def _streams(self, count: int) -> list[Stream]:
        while len(self.streams) < count:
            self.streams.append(Stream(history=PrunerHistory(self.config.history_window)))
        return self.streams[:count]

    @property
    def cacher_active(self) -> bool:
        return self.config.cacher and self.config.cache_interval > 1

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
            )
        self.plan = plan
        self.last_recomputed = {}
        try:
            yield plan
        finally:
            self.plan = None
        total = sum(frames_per_stream)
        refs = len(plan.ref_rows) if plan is not None else total
        self.stats.frames += total
        self.stats.reference_frames += refs
        self.stats.vit_tokens += total * tokens
        recompute = plan.num_recompute if plan is not None else tokens
        self.stats.vit_tokens_recomputed += refs * tokens + (total - refs) * recompute
        for stream, count in zip(streams, frames_per_stream):
            stream.cache.frames_seen += count
            stream.cache.geometry = geometry if self.cacher_active else None

    def count_llm_tokens(self, tokens_in: int, tokens_kept: int) -> None:
        self.stats.llm_tokens_in += tokens_in
        self.stats.llm_tokens_kept += tokens_kept

    def prune(self, frame_tokens: Tensor) -> Tensor:
        """Kept positions [B, F, k] for visual tokens [B, F, n, D] (row b = stream b, frames in
        time order); updates each stream's history."""
        return torch.stack(self.prune_streams(list(frame_tokens)))

    def prune_streams(self, stream_tokens: list[Tensor]) -> list[Tensor]:
        """Kept positions [F_s, k_s] for each stream's visual tokens [F_s, n_s, D] (entry s =
        stream s; frame counts and token counts may differ between streams)."""
        streams = self._streams(len(stream_tokens))
        config = self.config
        with self.timer.section("selection"):
            self.last_kept = [
                prune_frames(tokens, stream.history, config.keep_ratio, config.alpha, config.pruner_scoring)
                for tokens, stream in zip(stream_tokens, streams)
            ]
        return self.last_kept


__all__ = ["STCState", "Stats"]
