"""Which visual tokens a testbed training sample keeps: training with missing tokens.

A model trained only on complete frames is out of distribution when a selector has pruned them,
so any pruning looks bad, whatever it keeps. The testbed model is therefore trained on frames
with tokens dropped the way the streaming engine feeds a pruned frame: the same number of tokens
kept in every frame of a sample (`stc.pruner.keep_count`), in their original order, laid
out contiguously after the previous frame's kept tokens (see `SequenceBuilder.build`). Each sample
draws one keep ratio and one pattern, as an evaluation run uses one method at one ratio:

- random:  any tokens;
- blob:    a spatially contiguous region around a random cell (the nearest cells to it);
- change:  the cells whose pixels changed most since the previous frame (what a novelty scorer
           such as STC-Pruner or EVS keeps), ties broken at random;
- objects: the cells an object covers first (the oracle's choice), the rest at random.

"change" and "objects" are the rules of selectors the benchmark compares (EVS, TimeChat-Online and
the change scorers; the oracle): a model trained on them has seen those selectors' frames and no
other's, which favours them (issue 33). `NEUTRAL_PATTERNS` (random, blob) are the ones the v3
recipe trains on: random is the floor every selector is compared with, and no selector keeps a
blob around a random cell.

Pure NumPy/torch; the cell labels come from `testbed.cell_labels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stc.pruner import keep_count

PATTERNS = ("random", "blob", "change", "objects")
NEUTRAL_PATTERNS = ("random", "blob")


def check_patterns(patterns) -> tuple[str, ...]:
    """The patterns as a tuple; ValueError for an empty set or an unknown name."""
    patterns = tuple(patterns)
    if not patterns:
        raise ValueError(f"no drop pattern given; choose from {', '.join(PATTERNS)}")
    for pattern in patterns:
        if pattern not in PATTERNS:
            raise ValueError(f"unknown drop pattern {pattern!r}; one of {', '.join(PATTERNS)}")
    return patterns


def cell_change(frames: np.ndarray, grid: int) -> np.ndarray:
    """[F, grid * grid] mean absolute pixel change of each cell since the previous frame (the
    first frame: against itself, all zero). frames: [F, H, W, 3] uint8 with H, W divisible by grid."""
    count, height, width = frames.shape[:3]
    if height % grid or width % grid:
        raise ValueError(f"frames of {height}x{width} px do not split into a {grid}x{grid} grid")
    values = frames.astype(np.int16)
    change = np.abs(np.diff(values, axis=0, prepend=values[:1])).astype(np.float64)
    cells = change.reshape(count, grid, height // grid, grid, width // grid, 3)
    return cells.mean(axis=(2, 4, 5)).reshape(count, grid * grid)


def keep_indices(pattern: str, kept: int, grid: int, rng: np.random.Generator,
                 frames: np.ndarray | None = None, on_object: np.ndarray | None = None) -> torch.Tensor:
    """Flat indices (into the sample's frames x grid * grid token rows, ascending) of the `kept`
    tokens per frame that `pattern` keeps. `frames` [F, H, W, 3] is needed by "change",
    `on_object` [F * grid * grid] bool by "objects"."""
    check_patterns((pattern,))
    tokens = grid * grid
    count = len(frames) if frames is not None else len(on_object) // tokens
    rows, cols = np.divmod(np.arange(tokens), grid)
    change = cell_change(frames, grid) if pattern == "change" else None
    chosen = []
    for f in range(count):
        jitter = rng.random(tokens)  # the random pattern, and the tie-break of the others
        if pattern == "random":
            score = jitter
        elif pattern == "blob":
            row, col = rng.integers(grid, size=2)
            score = -((rows - row) ** 2 + (cols - col) ** 2) + 0.5 * jitter
        elif pattern == "change":
            score = change[f] + 1e-6 * jitter
        else:
            score = on_object[f * tokens : (f + 1) * tokens].astype(np.float64) + 0.5 * jitter
        chosen.append(np.sort(np.argsort(-score, kind="stable")[:kept]) + f * tokens)
    return torch.from_numpy(np.concatenate(chosen))


@dataclass
class TokenDrop:
    """Draws, per training sample, whether it keeps every token (with probability `dense_share`)
    or which ones: a keep ratio uniform in [min_keep, max_keep) and one of `patterns`."""

    rng: np.random.Generator
    dense_share: float = 0.25
    min_keep: float = 0.1
    max_keep: float = 1.0
    patterns: tuple[str, ...] = PATTERNS

    def __post_init__(self) -> None:
        self.patterns = check_patterns(self.patterns)
        if not 0 <= self.dense_share <= 1:
            raise ValueError(f"dense share must be in [0, 1], got {self.dense_share}")

    def __call__(self, grid: int, frames: np.ndarray, on_object: np.ndarray) -> torch.Tensor | None:
        """Flat kept indices for one sample, or None (every token kept)."""
        if self.rng.random() < self.dense_share:
            return None
        kept = keep_count(grid * grid, float(self.rng.uniform(self.min_keep, self.max_keep)))
        pattern = self.patterns[int(self.rng.integers(len(self.patterns)))]
        if pattern == "change" and len(frames) < 2:
            pattern = "random"  # a single still has no previous frame
        return keep_indices(pattern, kept, grid, self.rng, frames, on_object)
