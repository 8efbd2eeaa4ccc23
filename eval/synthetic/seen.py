"""What a question can see of a synthetic episode, read from the streaming engine (for ER).

The episode streams through `StreamingSession` in the chunks the benchmark runner gives it, and
every question is asked where the model run asks it (after the frames up to its time,
`stc.eval.runner.visible_until`). Three things decide whether a token cell of a frame still shows
the question its content:

- the selection kept it (`kept_cells`: the positions `IngestReport.kept` gives);
- STC-Cacher: a ViT token that the Cacher did not recompute in every block reuses its reference
  frame's branches there, so it shows its cell only if the cell is unchanged since that
  reference: the same objects with the same appearance and the same coverage (`SceneCells`; the
  background, which drifts in every frame, is not evidence). An LLM cell pools ViT patches; it is
  stale, and holds nothing, when one of its patches is (`stale_cells`). What the Cacher recomputed
  is read from the state it reports (`recomputed_patches`), never re-derived;
- retrieval and eviction: a question reads the blocks the engine retrieves for it
  (`StreamingSession.retrieve`, the retrieval step of `ask`; a block read by any layer counts),
  among the blocks still held, so an evicted block is never seen. The view also records the
  blocks a question could have read (`held`: still in the store, at or after its `since`), so
  that ER can be read under another retrieval than the method's own (`EpisodeView.seen_in`).

With the defaults (32 frames, `topk` 64, no budget) every block is retrieved; the Cacher's rule
holds for its plain schedule (with `refresh_tokens` a reused token may come from a later frame
than the reference, which is not modelled).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from stc.peers import ground_truth

from stc.eval.runner import FrameSource, visible_until
from stc.eval.synthetic.episodes import Episode
from stc.eval.synthetic.evidence import object_cells
from stc.eval.synthetic.oracle import EpisodePriorities, cell_priorities
from stc.eval.synthetic.truth import EpisodeTruth, square_grid

RUNNER_CHUNK = inspect.signature(FrameSource).parameters["chunk"].default  # frames per append_frames call


def kept_cells(report) -> list:
    """Per frame of one `append_frames` call: the positions the engine kept of its visual tokens
    (None: all of them). The one place that reads what a selection kept (`IngestReport.kept`)."""
    if report.kept is None:
        return [None] * report.frames
    if len(report.kept) != report.frames:
        raise ValueError(f"--evidence needs one block per frame; this model gave {len(report.kept)} blocks "
                         f"for {report.frames} frames")
    return [positions.cpu() for positions in report.kept]


def recomputed_patches(state, frames: int) -> list[tuple[torch.Tensor, ...] | None]:
    """Per frame of the last vision-encoder call (one stream of `frames` frames): None where the
    encoder computed all its tokens (a reference frame, or no Cacher), else per block the ViT
    patch positions the Cacher recomputed (the others reused the reference). The one place that
    reads the Cacher's report (`STCState.call`: `reused_rows`, and `recomputed`, block ->
    [reused rows, k])."""
    call = state.call
    per_frame: list[tuple[torch.Tensor, ...] | None] = [None] * frames
    if call.reused_rows is None or len(call.reused_rows) == 0:
        return per_frame
    blocks = [call.recomputed[block] for block in sorted(call.recomputed)]
    if not blocks or any(index is None or len(index) != len(call.reused_rows) for index in blocks):
        raise ValueError("the Cacher's report does not cover the frames it reused")
    for i, row in enumerate(call.reused_rows.tolist()):
        per_frame[row] = tuple(index[i].cpu() for index in blocks)
    return per_frame


@dataclass(frozen=True)
class Reuse:
    """A non-reference frame: the frame whose features it reuses and, per ViT block, the patch
    positions the Cacher recomputed."""

    reference: int
    recomputed: tuple[torch.Tensor, ...]

    def fresh(self) -> set[int]:
        """Patches recomputed in every block (the others carry some of the reference)."""
        return set.intersection(*(set(index.tolist()) for index in self.recomputed))


class SceneCells:
    """What covers each cell of each frame of an episode: per cell the visible objects touching
    it, with their appearance and their share of the cell (`evidence.object_cells`). Cached per
    (frame, grid side), so every run over the episode shares the drawing."""

    def __init__(self, episode: Episode):
        self.episode = episode
        self._contents: dict[tuple[int, int], list[frozenset]] = {}

    def contents(self, frame: int, side: int) -> list[frozenset]:
        if (frame, side) not in self._contents:
            cells = [set() for _ in range(side * side)]
            for obj in self.episode.states[frame]:
                if obj.visible:
                    for cell, share in object_cells(obj, self.episode.config.size, side).items():
                        cells[cell].add((obj.id, obj.shape, obj.glyph, obj.colour, round(share, 9)))
            self._contents[frame, side] = [frozenset(cell) for cell in cells]
        return self._contents[frame, side]


def stale_cells(scene: SceneCells, frame: int, reuse: Reuse, patch_side: int, grid: int) -> set[int]:
    """LLM cells (grid x grid, row-major) of `frame` that show a stale view: one of their ViT
    patches (patch_side x patch_side, pooled into cell (row * grid // patch_side, col * grid //
    patch_side)) was reused although its content changed since the reference frame."""
    fresh = reuse.fresh()
    now, then = scene.contents(frame, patch_side), scene.contents(reuse.reference, patch_side)
    cells = set()
    for patch in range(patch_side * patch_side):
        if patch not in fresh and now[patch] != then[patch]:
            row, col = divmod(patch, patch_side)
            cells.add((row * grid // patch_side) * grid + col * grid // patch_side)
    return cells


@dataclass
class EpisodeView:
    """One episode as the engine showed it under one method: the token grid side, the kept
    positions of every frame (None: all), the stale cells of frames the Cacher reused, the
    frames each question's retrieval read (qid -> frames) and those it could have read (`held`:
    qid -> frames still in the store and eligible when it was asked)."""

    grid: int
    kept: dict[int, torch.Tensor | None]
    stale: dict[int, set[int]] = field(default_factory=dict)
    retrieved: dict[str, set[int]] = field(default_factory=dict)
    held: dict[str, set[int]] = field(default_factory=dict)

    def visible(self, frame: int):
        """Positions of `frame` that still show their content (None: every cell)."""
        kept, stale = self.kept[frame], self.stale.get(frame)
        if not stale:
            return kept
        positions = range(self.grid * self.grid) if kept is None else kept.tolist()
        return torch.tensor([p for p in positions if int(p) not in stale], dtype=torch.long)

    def seen(self, qid: str) -> dict:
        """frame -> visible positions, for the frames question `qid` read (`evidence_retention`'s
        `kept`)."""
        return {frame: self.visible(frame) for frame in sorted(self.retrieved[qid])}

    def seen_in(self, qid: str, frames) -> dict:
        """Like `seen`, had question `qid` read `frames` (another retrieval's choice) instead:
        only those this run still held for it count (an evicted block holds nothing)."""
        return {frame: self.visible(frame) for frame in sorted(self.held[qid] & set(frames))}


def stream_episode(model, processor, config, episode: Episode, evidence_by_grid, session: dict | None = None,
                   scene: SceneCells | None = None) -> EpisodeView:
    """Stream one episode through the engine with `config` (the scene's ground truth and the
    questions' evidence at hand: the oracles read them, other methods do not) and ask each
    question's retrieval at its time: what every question can see. The frames up to a question
    go in the chunks the benchmark runner's calls give the engine (`RUNNER_CHUNK` frames a call,
    cut into `vit_batch`), one call per chunk: the Cacher's report covers the last encoder call."""
    from stc.integrations.engine.session import StreamingSession  # on use: it imports transformers

    scene = scene or SceneCells(episode)
    times = [float(t) for t in episode.timestamps]
    questions = sorted(episode.queries, key=visible_until)  # stable: ties keep the episode's order
    view = EpisodeView(grid=0, kept={})
    reference, start = None, 0
    with StreamingSession(model, processor, config=config, sample_fps=episode.config.fps, **(session or {})) as engine:

        def ingest(first: int, stop: int) -> None:
            nonlocal reference
            report = engine.append_frames(episode.frames[first:stop], timestamps=times[first:stop])
            view.grid = square_grid(report.tokens_in // report.frames, "--evidence")
            view.kept.update(zip(range(first, stop), kept_cells(report)))
            for frame, recomputed in enumerate(recomputed_patches(engine.state, stop - first), first):
                if recomputed is None:
                    reference = frame
                    continue
                stats = engine.state.stats
                side = square_grid(stats.vit_tokens // stats.frames, "--evidence (the Cacher's patches)")
                if stale := stale_cells(scene, frame, Reuse(reference, recomputed), side, view.grid):
                    view.stale[frame] = stale

        with ground_truth(EpisodeTruth(episode)), cell_priorities(EpisodePriorities(episode, evidence_by_grid)):
            for frame in range(len(times)):
                following = times[frame + 1] if frame + 1 < len(times) else float("inf")

                def due() -> bool:  # the next question is asked now (the runner's cut-off)
                    return bool(questions) and visible_until(questions[0]) + 1e-6 < following

                if not due() and frame + 1 < len(times):
                    continue
                for call in range(start, frame + 1, RUNNER_CHUNK):  # the runner's calls, the engine's chunks
                    stop = min(call + RUNNER_CHUNK, frame + 1)
                    for first in range(call, stop, engine.vit_batch):
                        ingest(first, min(first + engine.vit_batch, stop))
                start = frame + 1
                while due():
                    query = questions.pop(0)
                    blocks = engine.retrieve(query.prompt, since=query.start)
                    view.retrieved[query.qid] = {block for ids in blocks.values() for block in ids}
                    view.held[query.qid] = {block for block, time in zip(engine.store.ids, engine.store.timestamps)
                                            if query.start is None or time >= query.start}
    return view
