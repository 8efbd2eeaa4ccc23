"""The evidence oracle: a true ceiling for a selector at its budget on the synthetic testbed.

It reads each episode's questions (`stc.eval.synthetic.evidence`) and keeps, per frame, first the
cells where some question's evidence lies, then the cells of objects that changed since the
previous frame (entered, moved, changed colour or shape), then random cells: random's order
(`stc.peers` RandomSelector, same seed rule) breaks every tie. Within the evidence, a cell of a
sighting that is its group's only one (e.g. "what colour is the circle now") goes before a cell
of a sighting that other frames can stand in for, and an object's cells go in order of the share
of its ink they hold, so a budget too small for all the evidence keeps what decides the most.

The scene reaches the selector through `cell_priorities` (a hook like `stc.peers.ground_truth`,
kept here so that the core never hears of questions); the method is registered in the peer
table as `evidence-oracle` (`register`), so `MethodConfig("evidence-oracle")` patches a model like
any peer method. Not causal: it knows the episode's future questions, which is what makes it a
ceiling.

One stream holds all of an episode's questions (the ER runner's and the model run's alike), so a
frame's evidence is the union of the evidence that every question of the episode has in it. The
ER runner gives the priorities of the episode it streams (`EpisodePriorities`); the model run
(`stc eval synthetic --method evidence-oracle`) reads videos and gets those of the episode that
`StreamedTruth` recognises (`StreamedPriorities`): the same scores, so ER and accuracy describe
the same kept tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch

import stc.methods  # noqa: F401  (its name tables first: --method keeps naming the core's methods only)
from stc.peers import PEER_METHODS, RandomSelector

from stc.eval.synthetic.episodes import Episode
from stc.eval.synthetic.evidence import Evidence, episode_evidence, object_cells
from stc.eval.synthetic.truth import StreamedTruth, square_grid

EVIDENCE_ORACLE = "evidence-oracle"
EVIDENCE_TIER = 3.0  # evidence cells score in (3, 5]: above changed object cells (1, 2], above the rest (0)
CHANGED_TIER = 1.0

CellPriorities = Callable[[int, int, int], torch.Tensor]  # (stream, frame t, tokens n) -> [n] float
_PRIORITIES: ContextVar[CellPriorities | None] = ContextVar("stc_evidence_priorities", default=None)


@contextmanager
def cell_priorities(priorities: CellPriorities) -> Iterator[None]:
    """Inside this block the evidence oracle asks `priorities(stream, t, n)` how much each of frame
    t's n cells is worth keeping (higher first); set before the frames arrive."""
    token = _PRIORITIES.set(priorities)
    try:
        yield
    finally:
        _PRIORITIES.reset(token)


class EvidenceOracleSelector(RandomSelector):
    """Keeps the cells with the highest `cell_priorities` first, ties in random's order; the
    budget is every selector's, k = round(n * keep_ratio). Knob: seed (0)."""

    description = "keep the questions' evidence cells first, then changed object cells, then random (ceiling)"
    needs_ground_truth = True

    def select_frame(self, tokens, context, t):
        priorities = _PRIORITIES.get()
        if priorities is None:
            raise ValueError("the evidence oracle needs the episode's questions "
                             "(stc.eval.synthetic.oracle.cell_priorities): only the synthetic testbed has them")
        score = torch.as_tensor(priorities(self.stream, t, len(tokens)), dtype=torch.float64).cpu()
        if score.shape != (len(tokens),):
            raise ValueError(f"the priorities of frame {t} score {tuple(score.shape)} cells for {len(tokens)} tokens")
        return self.ranked_first(tokens, score, t)


def register() -> None:
    """Add the evidence oracle to the peer table (once; importing this module does it), so that
    `MethodConfig("evidence-oracle")` patches a model. `stc.methods`' tables (the `--method` list)
    are built before, without it; `stc.methods.method_config` looks references up in the peer
    table, so `stc eval synthetic --method evidence-oracle` finds it, and other commands refuse it
    as a method that needs the scene."""
    PEER_METHODS.setdefault(EVIDENCE_ORACLE, EvidenceOracleSelector)


register()


def evidence_priorities(episode: Episode, grid: int, evidence: list[Evidence] | None = None) -> np.ndarray:
    """[frames, grid * grid] the oracle's score of every cell of every frame of the episode:
    EVIDENCE_TIER + 1 / (sightings in the group) + the cell's share of the object's ink for an
    evidence cell (the best of its sightings), CHANGED_TIER + ink share for a cell of an object
    that changed since the previous frame, 0 elsewhere."""
    evidence = episode_evidence(episode, grid) if evidence is None else evidence
    scores = np.zeros((len(episode.states), grid * grid))
    for frame, objects in enumerate(episode.states):
        before = episode.states[frame - 1] if frame else ()
        for obj in objects:
            if obj.visible and (not before or before[obj.id] != obj):
                _raise(scores[frame], object_cells(obj, episode.config.size, grid), CHANGED_TIER)
    for question in evidence:
        for group in question.groups:
            for item in group:
                _raise(scores[item.frame], item.cells, EVIDENCE_TIER + 1.0 / len(group))
    return scores


def _raise(row: np.ndarray, cells: dict[int, float], tier: float) -> None:
    total = sum(cells.values())
    if total == 0:
        return
    for cell, share in cells.items():
        row[cell] = max(row[cell], tier + share / total)


class EpisodePriorities:
    """`cell_priorities` for one episode, on the grid the engine's frames turn out to have."""

    def __init__(self, episode: Episode, evidence_by_grid: Callable[[int], list[Evidence]] | None = None):
        self.episode = episode
        self.evidence_by_grid = evidence_by_grid
        self._scores: dict[int, np.ndarray] = {}

    def __call__(self, stream: int, t: int, tokens: int) -> torch.Tensor:
        grid = square_grid(tokens, "the evidence oracle")
        if grid not in self._scores:
            evidence = None if self.evidence_by_grid is None else self.evidence_by_grid(grid)
            self._scores[grid] = evidence_priorities(self.episode, grid, evidence)
        scores = self._scores[grid]
        if not 0 <= t < len(scores):
            raise ValueError(f"the evidence oracle asked for frame {t} of an episode of {len(scores)} frames")
        return torch.from_numpy(scores[t])


class StreamedPriorities:
    """`cell_priorities` for the benchmark's model run: those of the episode that `truth` (the
    run's frame filter, `StreamedTruth`) recognised in the frames the runner streams now."""

    def __init__(self, truth: StreamedTruth):
        self.truth = truth
        self._by_episode: dict[int, EpisodePriorities] = {}

    def __call__(self, stream: int, t: int, tokens: int) -> torch.Tensor:
        if self.truth.current is None:
            raise RuntimeError("the evidence oracle got a frame before any episode started")
        episode = self.truth.current.episode
        if episode.seed not in self._by_episode:
            self._by_episode[episode.seed] = EpisodePriorities(episode)
        return self._by_episode[episode.seed](stream, t, tokens)
