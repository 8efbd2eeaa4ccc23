"""Evidence of synthetic questions (stc.eval.synthetic.evidence) on hand-built scenes and masks."""

from stc.eval.records import Query
from stc.eval.synthetic.episodes import Episode, episode_seed, generate_episode
from stc.eval.synthetic.evidence import Evidence, EvidenceItem, episode_evidence, evidence_retention, object_cells
from stc.eval.synthetic.scene import ObjectState, SceneConfig

import numpy as np


def square(x, y, size, visible=True, object_id=0):
    return ObjectState(object_id, "square", "", "red", size, x, y, visible)


def test_object_cells_are_fractional_and_uncut():
    # a 10 px square centred on the middle of a 96 px frame straddles four 24 px cells equally
    cells = object_cells(square(48, 48, 10), 96, 4)
    assert set(cells) == {5, 6, 9, 10}
    assert max(cells.values()) - min(cells.values()) < 0.02
    assert 0.04 < cells[5] < 0.07  # about 30 of 576 px: a 30% rule would give it no cell at all
    inside = object_cells(square(12, 12, 10), 96, 4)
    assert set(inside) == {0}


def test_retention_needs_every_group_in_some_kept_frame():
    a = EvidenceItem(3, 0, {0: 0.5, 1: 0.5})
    b = EvidenceItem(5, 1, {7: 1.0})
    evidence = Evidence("q", "bt_colour_before", ((a,), (b,)))
    assert evidence_retention(evidence, {3: [0, 1], 5: [7]})
    assert evidence_retention(evidence, {3: [0], 5: None})  # half the ink meets the 0.5 rule
    assert not evidence_retention(evidence, {3: [0], 5: None}, threshold=0.6)
    assert not evidence_retention(evidence, {3: [0, 1], 5: [6]})  # group b lost
    assert not evidence_retention(evidence, {3: [0, 1]})  # frame 5 never seen
    assert evidence_retention(Evidence("q", "fp_appeared", ()), {})  # an absence needs nothing kept


def test_hand_built_scene_gives_the_object_at_the_question_time():
    states = (
        (square(0, 0, 10, visible=False),),
        (square(12, 12, 10),),
        (square(60, 60, 10),),
    )
    query = Query(qid="q0", video="v", time=2.0, prompt="", answer="A", task="rt_colour", kind="mc",
                  extra={"frame": 2, "target_id": 0, "options": [], "answer_text": "red"})
    episode = Episode(0, SceneConfig(frames=10), None, np.arange(3.0), states, [query])
    (evidence,) = episode_evidence(episode, 4)
    assert [[(i.frame, i.object_id) for i in g] for g in evidence.groups] == [[(2, 0)]]
    assert set(evidence.groups[0][0].cells) == {10}


def test_every_generated_question_has_evidence_and_dense_keeps_it():
    for index in range(20):
        episode = generate_episode(episode_seed("eval", index), render=False)
        all_kept = {f: None for f in range(episode.config.frames)}
        nothing = {f: [] for f in range(episode.config.frames)}
        for evidence in episode_evidence(episode, 4):
            assert all(group for group in evidence.groups), evidence  # every group can be seen
            assert evidence_retention(evidence, all_kept)
            assert evidence_retention(evidence, nothing) == (not evidence.groups)
