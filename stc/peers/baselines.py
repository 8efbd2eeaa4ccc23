"""Sanity baselines (uniform, random) and the reference ceiling (the oracle, which reads the
scene's ground truth through `ground_truth`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from stc.peers.base import FrameSelector, Option
from stc.peers.rules import gathered, uniform_positions
from stc.validation import is_int


class UniformSelector(FrameSelector):
    """Uniform keep (sanity baseline): k positions spread evenly over the frame's tokens in
    raster order, floor((i + 1/2) * n / k), the same in every frame. No knobs; no history."""

    description = "keep k tokens evenly spread over each frame (sanity baseline)"

    def select_frame(self, tokens, context, t):
        return gathered(tokens, uniform_positions(len(tokens), self.budget(len(tokens)), tokens.device))


class RandomSelector(FrameSelector):
    """Random keep (sanity baseline): k positions drawn without replacement. Deterministic: frame
    t of stream s uses a generator seeded with seed * 1_000_003 + s * 10_007 + t.
    Knob: seed (0)."""

    description = "keep k random tokens per frame, seeded per stream and frame (sanity baseline)"
    options = {"seed": Option(0, lambda v: is_int(v) and v >= 0, "an integer >= 0")}

    def draw(self, tokens: int, t: int) -> Tensor:
        """Frame t's random order of its positions 0..tokens-1 (CPU)."""
        generator = torch.Generator().manual_seed(self.settings["seed"] * 1_000_003 + self.stream * 10_007 + t)
        return torch.randperm(tokens, generator=generator)

    def ranked_first(self, tokens: Tensor, score: Tensor, t: int):
        """Keep the budget's highest-scoring tokens, ties broken (and the rest filled) in this
        frame's random order: the oracles' rule, whatever they score."""
        draw = self.draw(len(tokens), t)
        order = draw[score[draw].argsort(descending=True, stable=True)]
        return gathered(tokens, order[: self.budget(len(tokens))].sort().values.to(tokens.device))

    def select_frame(self, tokens, context, t):
        draw = self.draw(len(tokens), t)[: self.budget(len(tokens))]
        return gathered(tokens, draw.sort().values.to(tokens.device))


# -- Reference ceiling: the oracle ------------------------------------------------------------

ObjectCells = Callable[[int, int, int], Tensor]  # (stream, frame t, tokens n) -> [n] bool: on an object
_GROUND_TRUTH: ContextVar[ObjectCells | None] = ContextVar("stc_ground_truth", default=None)


@contextmanager
def ground_truth(cells: ObjectCells) -> Iterator[None]:
    """The oracle's hook: inside this block, `cells(stream, t, n)` tells the oracle which of frame
    t's n tokens lie on objects. Only an evaluation that knows the scene can supply it (`stc eval
    synthetic`, which follows the frames it streams); it is set before the frames arrive."""
    token = _GROUND_TRUTH.set(cells)
    try:
        yield
    finally:
        _GROUND_TRUTH.reset(token)


class OracleSelector(RandomSelector):
    """Oracle (reference ceiling, not a causal method): keeps the tokens whose cells an object
    covers first, then fills the budget k = round(n * keep_ratio) with random other tokens; with
    more object cells than k, k of them at random. The random order is random's (same seed rule),
    so on a frame without objects the oracle keeps what random keeps. The object cells are the
    scene's ground truth, read through `ground_truth` (a ValueError outside it): the ceiling for
    any selector at that budget. Knob: seed (0)."""

    description = "keep the tokens on objects first (scene ground truth), fill the budget at random (ceiling)"
    needs_ground_truth = True

    def select_frame(self, tokens, context, t):
        cells = _GROUND_TRUTH.get()
        if cells is None:
            raise ValueError("the oracle needs the scene's ground truth (stc.peers.ground_truth): "
                             "only `stc eval synthetic` has it")
        on_object = torch.as_tensor(cells(self.stream, t, len(tokens)), dtype=torch.bool).cpu()
        if on_object.shape != (len(tokens),):
            raise ValueError(f"the ground truth of frame {t} marks {tuple(on_object.shape)} cells for {len(tokens)} tokens")
        return self.ranked_first(tokens, on_object.long(), t)  # object cells first
