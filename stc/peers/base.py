"""The peer-method interface: what a selector receives (`FrameContext`), what it returns
(`Selection`), its knobs (`Option`) and the two base classes (`Selector` over a chunk of frames,
`FrameSelector` one frame at a time)."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from stc.pruner import keep_count

if TYPE_CHECKING:
    from stc.peers.config import MethodConfig


@dataclass
class FrameContext:
    """What some selectors read besides the tokens, for the same frames (first axis) of one stream.

    pixels:    [F, n, P] the pixel values of each token's image area (EVS).
    attention: [F, n] attention each token received in the vision encoder's last layer, on the
               token grid (VisionZip).
    recomputed: [F, n] share of the vision blocks in which the STC-Cacher recomputed each token's
               patches, pooled to the token grid; NaN rows for frames it computed densely
               (STC-Pruner's cacher_change scorer).
    """

    pixels: Tensor | None = None
    attention: Tensor | None = None
    recomputed: Tensor | None = None

    def frame(self, f: int) -> FrameContext:
        return FrameContext(*(None if t is None else t[f] for t in (self.pixels, self.attention, self.recomputed)))


@dataclass
class Selection:
    """The LLM's tokens of consecutive frames of one stream: per frame, the kept original positions
    [k_i] (ascending) and the tokens [k_i, D] placed there."""

    positions: list[Tensor]
    tokens: list[Tensor]

    @property
    def kept(self) -> int:
        return sum(len(p) for p in self.positions)


@dataclass(frozen=True)
class Option:
    """A knob of a peer method: its default and what values it accepts."""

    default: object
    accepts: Callable[[object], bool]
    rule: str  # the accepted values, in words


class Selector(abc.ABC):
    """Post-encoder token selection of one stream; subclasses hold the rule and its history."""

    description = ""
    options: dict[str, Option] = {}
    needs: frozenset[str] = frozenset()  # FrameContext fields the rule reads
    vit_side = False  # True when the method also works inside the vision encoder
    needs_ground_truth = False  # True when the rule reads the scene (`ground_truth`), not only the video

    def __init__(self, config: MethodConfig, stream: int = 0):
        self.keep_ratio = config.keep_ratio
        self.settings = config.options
        self.stream = stream
        self.frames_seen = 0

    def budget(self, tokens: int) -> int:
        return keep_count(tokens, self.keep_ratio)

    def select(self, tokens: Tensor, context: FrameContext | None = None) -> Selection:
        """Select among consecutive frames [F, n, D] of the stream and remember them."""
        context = FrameContext() if context is None else context
        missing = sorted(name for name in self.needs if getattr(context, name) is None)
        if missing:
            raise ValueError(f"{type(self).__name__} needs FrameContext.{', '.join(missing)}")
        selection = self.select_frames(tokens, context)
        self.frames_seen += tokens.shape[0]
        return selection

    @abc.abstractmethod
    def select_frames(self, tokens: Tensor, context: FrameContext) -> Selection:
        """The rule on frames [F, n, D] that follow the stream's `frames_seen` frames."""


class FrameSelector(Selector):
    """A selector whose rule takes one frame at a time (its history carries the past frames)."""

    def select_frames(self, tokens: Tensor, context: FrameContext) -> Selection:
        positions, outputs = [], []
        for f in range(tokens.shape[0]):
            kept, out = self.select_frame(tokens[f], context.frame(f), self.frames_seen + f)
            positions.append(kept)
            outputs.append(out)
        return Selection(positions, outputs)

    @abc.abstractmethod
    def select_frame(self, tokens: Tensor, context: FrameContext, t: int) -> tuple[Tensor, Tensor]:
        """Frame t of the stream (tokens [n, D]) -> kept positions [k] ascending, tokens [k, D]."""
