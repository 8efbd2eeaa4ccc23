"""Where each synthetic question's answer can be seen: its evidence, on the model's token grid.

A question's evidence is a list of groups; each group is a list of (frame, object) sightings, any
one of which suffices for that part of the answer (e.g. "the circle before it changed colour"
needs one sighting before the change and one after it). A question is answerable from what a
selector kept when every group has a sighting whose object kept enough of its ink
(`evidence_retention`). Questions answered by an absence ("No, it has not appeared yet", a count
of 0 objects) have no groups: nothing kept or dropped decides them.

Each sighting carries the object's ink per cell: the share of the cell the object covers, from
the scene geometry (the object drawn alone on an empty frame with the benchmark's own renderer),
so no cut-off hides a small object and no larger neighbour overwrites a cell. Evidence is a pure
function of the episode (no random draws), so episodes stay what they were.

Rules per task (q: the question's frame; "seen" means visible in a frame <= q):
  rt_colour, rt_shape, rt_position, rt_character: the object at q.
  rt_count: each visible object at q, one group each.
  bt_colour_before, bt_shape_before: the object before its change, and after it (up to q).
  bt_first: the answer seen before any other real option appears; each other real option seen.
  bt_previous: the answer seen before the object asked about appears; that object seen.
  bt_left: Yes: the object seen; No because it is on screen: the object at q; otherwise none.
  fp_appeared: Yes: the object seen from its entry up to q; No: none.
  fp_count: each counted object seen (colour changes: each changed object before and after);
    v3 ("in the last 8 seconds"): each object that arrived in the window, seen since its arrival.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from stc.eval.synthetic.episodes import Episode
from stc.eval.synthetic.history import History
from stc.eval.synthetic.questions import V3_QUESTIONS, YES
from stc.eval.synthetic.questions_v3 import RECENT_SECONDS, recent_arrivals
from stc.eval.synthetic.scene import GLYPH, ObjectState, draw_object

INK_LEVEL = 250  # the red channel of "white": a fully covered pixel of the object drawn alone


@dataclass(frozen=True)
class EvidenceItem:
    """One sighting: object `object_id` in `frame`, covering share `cells[c]` of token cell c."""

    frame: int
    object_id: int
    cells: dict[int, float]

    def kept_share(self, positions) -> float:
        """Share of the object's ink on the kept cells (positions: kept cell indices)."""
        total = sum(self.cells.values())
        if total == 0:
            return 0.0
        return sum(self.cells.get(int(p), 0.0) for p in positions) / total


@dataclass(frozen=True)
class Evidence:
    """The evidence of one question: every group must be seen in one of its sightings."""

    qid: str
    task: str
    groups: tuple[tuple[EvidenceItem, ...], ...]


def object_cells(obj: ObjectState, frame_size: int, grid: int) -> dict[int, float]:
    """{cell: share of the cell the object covers} on a grid x grid token grid (row-major);
    cells it does not touch are left out. The object is drawn alone, so its ink is its own."""
    canvas = np.zeros((frame_size, frame_size, 3), np.uint8)
    draw_object(canvas, replace(obj, colour="white"))
    ink = canvas[..., 0].astype(np.float64) / INK_LEVEL
    edges = np.linspace(0, frame_size, grid + 1)
    bounds = np.round(edges).astype(int)
    cells = {}
    for row in range(grid):
        for col in range(grid):
            block = ink[bounds[row]:bounds[row + 1], bounds[col]:bounds[col + 1]]
            if block.size and (covered := float(block.sum())) > 0:
                cells[row * grid + col] = covered / block.size
    return cells


def episode_evidence(episode: Episode, grid: int) -> list[Evidence]:
    """The evidence of every question of the episode, in the order of `episode.queries`."""
    history = History(episode.states)
    cache: dict[tuple[int, int], EvidenceItem] = {}

    def item(frame: int, object_id: int) -> EvidenceItem:
        if (frame, object_id) not in cache:
            obj = episode.states[frame][object_id]
            cache[frame, object_id] = EvidenceItem(frame, object_id, object_cells(obj, episode.config.size, grid))
        return cache[frame, object_id]

    def seen(object_id: int, start: int, stop: int) -> tuple[EvidenceItem, ...]:
        """Sightings of the object in frames [start, stop)."""
        return tuple(item(f, object_id) for f in range(max(start, 0), min(stop, history.frames))
                     if episode.states[f][object_id].visible)

    result = []
    for query in episode.queries:
        id_lists = _evidence_ids(query, history, episode.config.fps)
        groups = tuple(g for g in (seen(i, start, stop) for i, start, stop in id_lists))
        result.append(Evidence(query.qid, query.task, groups))
    return result


def _evidence_ids(query, history: History, fps: float) -> list[tuple[int, int, int]]:
    """(object id, first frame, stop frame) of each evidence group of one question."""
    task, q = query.task, query.extra["frame"]
    target = query.extra["target_id"]
    upto = q + 1
    by_description = {history.description(i): i for i in history.order}
    if task in ("rt_colour", "rt_shape", "rt_position", "rt_character"):
        return [(target, q, upto)]
    if task == "rt_count":
        return [(o.id, q, upto) for o in history.visible(q)]
    if task in ("bt_colour_before", "bt_shape_before"):
        change = next(c for c, before, _ in history.changes if before.id == target)
        return [(target, 0, change), (target, change, upto)]
    if task == "bt_first":
        shown = [by_description[o] for o in query.extra["options"] if o in by_description]
        answer = by_description[query.extra["answer_text"]]
        others = [i for i in shown if i != answer]
        until = min(history.first[i] for i in others) if others else upto
        return [(answer, 0, min(until, upto))] + [(i, 0, upto) for i in others]
    if task == "bt_previous":
        answer = by_description[query.extra["answer_text"]]
        asked = history.order[history.order.index(answer) + 1]
        return [(answer, 0, history.first[asked]), (asked, 0, upto)]
    if task == "bt_left":
        if query.answer == YES:
            return [(target, 0, upto)]
        on_screen = target is not None and any(o.id == target for o in history.visible(q))
        return [(target, q, upto)] if on_screen else []
    if task == "fp_appeared":
        return [(target, 0, upto)] if query.answer == YES else []
    if task == "fp_count" and V3_QUESTIONS["fp_count"].format(seconds=RECENT_SECONDS) in query.prompt:
        return [(i, history.first[i], upto) for i in recent_arrivals(history, q, fps)]
    if task == "fp_count":
        return _count_ids(query.prompt, history, q)
    raise ValueError(f"no evidence rule for task {task!r}")


def _count_ids(prompt: str, history: History, q: int) -> list[tuple[int, int, int]]:
    if "colour changes" in prompt:
        changed = [(before.id, c) for c, before, after in history.changes if c <= q and before.colour != after.colour]
        return [group for i, c in changed for group in ((i, 0, c), (i, c, q + 1))]
    appeared = history.appeared(q)
    if "shapes" in prompt:
        appeared = [i for i in appeared if history.appearance[i].shape != GLYPH]
    elif "characters" in prompt:
        appeared = [i for i in appeared if history.appearance[i].shape == GLYPH]
    return [(i, 0, q + 1) for i in appeared]


def evidence_retention(evidence: Evidence, kept, threshold: float = 0.5) -> bool:
    """Whether the kept tokens still hold the question's evidence: every group has a sighting
    whose object keeps at least `threshold` of its ink on kept cells. kept: frame -> kept cell
    indices (None: every cell kept); frames missing from it were not seen by the model."""
    for group in evidence.groups:
        if not any(item.frame in kept and _share(item, kept[item.frame]) >= threshold for item in group):
            return False
    return True


def _share(item: EvidenceItem, positions) -> float:
    return 1.0 if positions is None else item.kept_share(positions)
