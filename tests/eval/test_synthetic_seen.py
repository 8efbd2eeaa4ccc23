"""What a question sees of a synthetic episode (stc.eval.synthetic.seen): the STC-Cacher's reuse
on hand-made scenes and masks, and what the engine reports."""

import numpy as np
import pytest
import torch

from stc.config import STCConfig
from stc.eval.records import Query
from stc.eval.synthetic.episodes import Episode
from stc.eval.synthetic.evidence import episode_evidence
from stc.eval.synthetic.retention import held_out_episodes, retention_outcomes, retention_report
from stc.eval.synthetic.scene import ObjectState, SceneConfig
from stc.eval.synthetic.seen import EpisodeView, Reuse, SceneCells, stale_cells, stream_episode
from stc.eval.testbed import TESTBED_DIR

shipped = pytest.mark.skipif(not (TESTBED_DIR / "config.json").exists(), reason="testbed model not trained")

PATCHES, GRID = 8, 4  # the shipped model's geometry: 8 x 8 ViT patches pooled 2 x 2 into 4 x 4 cells
ON_OBJECT = {0, 1, 8, 9}  # the patches a 10 px square centred at (12, 12) covers (96 px frame, 12 px patches)


def square(x, y, visible=True, colour="red"):
    return ObjectState(0, "square", "", colour, 10, x, y, visible)


def episode_of(states, question_frame):
    query = Query(qid="q", video="v", time=float(question_frame), prompt="what colour?", answer="A", task="rt_colour",
                  kind="mc", extra={"frame": question_frame, "target_id": 0, "options": [], "answer_text": "red"})
    return Episode(0, SceneConfig(frames=10), None, np.arange(float(len(states))), tuple((s,) for s in states), [query])


def reuse(reference, recomputed_per_block):
    return Reuse(reference, tuple(torch.tensor(sorted(p)) for p in recomputed_per_block))


def retained(episode, stale):
    frames = range(len(episode.states))
    view = EpisodeView(GRID, {f: None for f in frames}, stale, {"q": set(frames)})
    (outcome,) = retention_outcomes(episode_evidence(episode, GRID), view, episode=0)
    return outcome[1]


def stale_of(episode, reuses):
    scene = SceneCells(episode)
    return {f: cells for f, r in reuses.items() if (cells := stale_cells(scene, f, r, PATCHES, GRID))}


def test_a_static_scene_under_the_cacher_keeps_its_evidence():
    episode = episode_of([square(12, 12)] * 4, question_frame=3)
    nothing_on_it = [{63, 62}] * 4  # four blocks, none recomputes the object's patches
    reuses = {f: reuse(0, nothing_on_it) for f in (1, 2, 3)}
    assert stale_of(episode, reuses) == {}
    assert retained(episode, stale_of(episode, reuses))


def test_an_object_appearing_on_reused_patches_loses_its_evidence():
    episode = episode_of([square(12, 12, visible=False), square(12, 12)], question_frame=1)
    missed = {1: reuse(0, [{63}] * 4)}
    assert stale_of(episode, missed) == {1: {0}}  # its four patches pool into cell 0
    assert not retained(episode, stale_of(episode, missed))
    recomputed = {1: reuse(0, [ON_OBJECT | {63}] * 4)}
    assert stale_of(episode, recomputed) == {}
    assert retained(episode, stale_of(episode, recomputed))
    # one block that reused a patch of it is enough: that block's branches are the empty reference's
    partly = {1: reuse(0, [ON_OBJECT] * 3 + [ON_OBJECT - {9} | {63}])}
    assert stale_of(episode, partly) == {1: {0}}


def test_a_change_of_colour_or_place_is_a_change_and_the_reference_is_what_counts():
    moved = episode_of([square(12, 12), square(14, 12)], question_frame=1)
    assert stale_of(moved, {1: reuse(0, [{63}] * 4)}) == {1: {0}}
    recoloured = episode_of([square(12, 12), square(12, 12, colour="blue")], question_frame=1)
    assert stale_of(recoloured, {1: reuse(0, [{63}] * 4)}) == {1: {0}}
    # frame 2 equals frame 1 but reuses frame 0, where the object was not yet: stale
    late = episode_of([square(12, 12, visible=False), square(12, 12), square(12, 12)], question_frame=2)
    assert stale_of(late, {2: reuse(0, [{63}] * 4)}) == {2: {0}}
    assert stale_of(late, {2: reuse(1, [{63}] * 4)}) == {}


def test_stale_cells_leave_the_kept_positions():
    view = EpisodeView(GRID, {0: None, 1: torch.tensor([0, 5, 6])}, {0: {3}, 1: {5}}, {"q": {0, 1}})
    assert view.visible(0).tolist() == [0, 1, 2] + list(range(4, 16))
    assert view.visible(1).tolist() == [0, 6]
    assert view.seen("q").keys() == {0, 1}


@shipped
def test_the_engine_reports_the_cachers_reuse_and_dense_has_none():
    from stc.integrations.loading import load_checkpoint

    model, processor = load_checkpoint(TESTBED_DIR)
    (episode,) = held_out_episodes(0, 1)
    evidence = episode_evidence(episode, GRID)
    dense = stream_episode(model, processor, None, episode, None)
    assert dense.stale == {} and dense.grid == GRID
    assert all(frames == set(range(q.extra["frame"] + 1)) for q in episode.queries
               for frames in [dense.retrieved[q.qid]])
    cacher = stream_episode(model, processor, STCConfig(pruner=False), episode, None)
    assert all(kept is None for kept in cacher.kept.values())  # the Cacher alone drops no token
    assert cacher.stale and 0 not in cacher.stale  # frame 0 is a reference: nothing reused
    assert all(cells <= set(range(GRID * GRID)) for cells in cacher.stale.values())
    outcomes = retention_outcomes(evidence, cacher, episode.seed)
    assert len(outcomes) == len(episode.queries)
    assert retention_report(retention_outcomes(evidence, dense, episode.seed)).overall == 100.0


def test_a_frame_the_question_did_not_retrieve_holds_no_evidence():
    episode = episode_of([square(12, 12)] * 3, question_frame=2)  # evidence: the object at frame 2
    evidence = episode_evidence(episode, GRID)
    everything = {f: None for f in range(3)}
    for retrieved, expected in (({0, 1, 2}, True), ({2}, True), ({0, 1}, False), (set(), False)):
        view = EpisodeView(GRID, everything, {}, {"q": retrieved})
        assert retention_outcomes(evidence, view, episode=0)[0][1] is expected


def test_another_retrievals_frames_count_only_where_the_run_still_held_them():
    episode = episode_of([square(12, 12)] * 3, question_frame=2)  # evidence: the object at frame 2
    evidence = episode_evidence(episode, GRID)
    everything = {f: None for f in range(3)}
    missed = EpisodeView(GRID, everything, {}, {"q": {0}}, {"q": {0, 1, 2}})  # its retrieval missed frame 2
    assert retention_outcomes(evidence, missed, episode=0)[0][1] is False
    assert retention_outcomes(evidence, missed, 0, frames=lambda qid: {1, 2})[0][1] is True
    assert missed.seen_in("q", {1, 2}) == {1: None, 2: None}
    evicted = EpisodeView(GRID, everything, {}, {"q": {0}}, {"q": {0, 1}})  # frame 2 was evicted in this run
    assert evicted.seen_in("q", {1, 2}) == {1: None}
    assert retention_outcomes(evidence, evicted, 0, frames=lambda qid: {1, 2})[0][1] is False


def _retention(view, evidence):
    return [retained for _, retained, _, _ in retention_outcomes(evidence, view, 0)]


@shipped
def test_retrieval_and_eviction_decide_which_frames_a_question_sees():
    from stc.integrations.loading import load_checkpoint

    model, processor = load_checkpoint(TESTBED_DIR)
    (episode,) = held_out_episodes(0, 1)
    evidence = episode_evidence(episode, GRID)
    asked = {q.qid: q.extra["frame"] for q in episode.queries}
    default = stream_episode(model, processor, None, episode, None)
    everything = stream_episode(model, processor, None, episode, None, {"n_local": 10**6, "topk": 1000})
    assert default.retrieved == everything.retrieved == {qid: set(range(q + 1)) for qid, q in asked.items()}
    assert default.held == default.retrieved  # every block it could read was read
    assert _retention(default, evidence) == _retention(everything, evidence) == [True] * len(evidence)

    narrow = stream_episode(model, processor, None, episode, None, {"n_local": 16, "topk": 1})
    layers = model.config.text_config.num_hidden_layers
    assert all(1 <= len(narrow.retrieved[qid]) <= layers for qid in asked)  # one block per layer, at most
    assert narrow.held == default.held  # nothing evicted: all it could have read
    lost = _retention(narrow, evidence)
    assert lost.count(False) >= 3
    for e, kept in zip(evidence, lost):  # a question keeps its evidence exactly when a retrieved frame holds it
        seen = narrow.retrieved[e.qid]
        assert kept == all(any(item.frame in seen for item in group) for group in e.groups)

    budget = stream_episode(model, processor, None, episode, None, {"n_local": 32, "memory_budget": 400_000})
    late = max(asked, key=asked.get)
    assert len(budget.retrieved[late]) < asked[late] + 1  # topk 64 holds every frame: the rest were evicted
    assert budget.held[late] == budget.retrieved[late]  # an evicted block is not one it could read
    assert {asked[late], asked[late] - 1} <= budget.retrieved[late]  # the window is never evicted


def test_the_cachers_report_is_read_per_frame_of_the_call():
    from types import SimpleNamespace

    from stc.eval.synthetic.seen import recomputed_patches
    from stc.state import VideoCall

    call = VideoCall(recomputed={0: torch.tensor([[1, 2], [3, 4]]), 1: torch.tensor([[1, 5], [3, 6]])},
                     reused_rows=torch.tensor([1, 3]))
    per_frame = recomputed_patches(SimpleNamespace(call=call), 4)
    assert per_frame[0] is None and per_frame[2] is None  # reference frames
    assert [t.tolist() for t in per_frame[1]] == [[1, 2], [1, 5]]
    assert [t.tolist() for t in per_frame[3]] == [[3, 4], [3, 6]]
    assert recomputed_patches(SimpleNamespace(call=VideoCall()), 2) == [None, None]  # Cacher off
    assert reuse(0, [{1, 2}, {1, 5}]).fresh() == {1}


@shipped
def test_what_the_cacher_reused_does_not_depend_on_the_chunks():
    """One frame per encoder call (vit_batch 1) and the runner's 16-frame chunks see the same."""
    from stc.integrations.loading import load_checkpoint

    model, processor = load_checkpoint(TESTBED_DIR)
    (episode,) = held_out_episodes(0, 1)
    chunked = stream_episode(model, processor, STCConfig(), episode, None)
    single = stream_episode(model, processor, STCConfig(), episode, None, {"vit_batch": 1})
    assert chunked.stale and chunked.stale == single.stale and chunked.retrieved == single.retrieved
    assert all(torch.equal(chunked.kept[f], single.kept[f]) for f in range(len(episode.states)))
