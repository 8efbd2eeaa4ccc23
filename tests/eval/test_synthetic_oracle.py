"""The evidence oracle (stc.eval.synthetic.oracle): the questions' evidence first, then changed
object cells, then random."""

import numpy as np
import pytest
import torch

from stc.eval.records import Query
from stc.eval.synthetic.episodes import Episode
from stc.eval.synthetic.oracle import (CHANGED_TIER, EVIDENCE_TIER, EpisodePriorities, cell_priorities,
                                       evidence_priorities)
from stc.eval.synthetic.retention import budget_runs, evidence_methods, held_out_episodes, measure_retention
from stc.eval.synthetic.scene import ObjectState, SceneConfig
from stc.eval.testbed import TESTBED_DIR
from stc.peers import MethodConfig

shipped = pytest.mark.skipif(not (TESTBED_DIR / "config.json").exists(), reason="testbed model not trained")


def square(x, y, object_id, visible=True):
    return ObjectState(object_id, "square", "", "red", 10, x, y, visible)


def hand_built_episode():
    """Two objects: object 0 still in cell 0, object 1 moving through cells 15 then 14; the
    question asks about object 0 at frame 2."""
    states = (
        (square(12, 12, 0), square(84, 84, 1)),
        (square(12, 12, 0), square(84, 84, 1)),
        (square(12, 12, 0), square(60, 84, 1)),
    )
    query = Query(qid="q0", video="v", time=2.0, prompt="", answer="A", task="rt_colour", kind="mc",
                  extra={"frame": 2, "target_id": 0, "options": [], "answer_text": "red"})
    return Episode(0, SceneConfig(frames=10), None, np.arange(3.0), states, [query])


def test_priorities_rank_evidence_then_changed_objects_then_the_rest():
    scores = evidence_priorities(hand_built_episode(), 4)
    assert scores[2, 0] > EVIDENCE_TIER + 1  # the only sighting of its group, all its ink in one cell
    assert CHANGED_TIER < scores[2, 14] <= CHANGED_TIER + 1  # object 1 moved into cell 14
    assert scores[1, 15] == 0 and scores[1, 0] == 0  # nothing changed in frame 1, no question about it
    assert CHANGED_TIER < scores[0, 0] <= CHANGED_TIER + 1 and CHANGED_TIER < scores[0, 15]  # both entered
    assert (scores[2, [1, 2, 3, 5]] == 0).all()


def test_the_evidence_oracle_keeps_the_highest_priorities_and_needs_them():
    from stc.eval.synthetic import oracle

    oracle.register()
    selector = MethodConfig("evidence-oracle", keep_ratio=2 / 16).make_selector()
    tokens = torch.randn(3, 16, 4)
    with pytest.raises(ValueError, match="needs the episode's questions"):
        selector.select(tokens)
    with cell_priorities(EpisodePriorities(hand_built_episode())):
        selection = selector.select(tokens)
    assert selection.positions[2].tolist() == [0, 14]  # the evidence, then the moved object
    assert torch.equal(selection.tokens[2], tokens[2, [0, 14]])
    random = MethodConfig("random", keep_ratio=2 / 16).make_selector().select(tokens)
    assert torch.equal(selection.positions[1], random.positions[1])  # frame 1 scores nothing: random's draw


@shipped
def test_through_the_engine_the_evidence_oracle_keeps_evidence_first():
    """At keep 0.3 (5 of 16 cells) every frame keeps its evidence cells first (all of them, or
    only evidence cells when there are more); measured ER on the first 10 held-out episodes:
    100% at keep 0.5, 99.0% at 0.3 (the object-cell oracle: 98.0%, 90.2%)."""
    from stc.integrations.loading import load_checkpoint
    from stc.eval.synthetic.retention import stream_episode
    from stc.eval.synthetic.evidence import episode_evidence

    model, processor = load_checkpoint(TESTBED_DIR)
    episodes = held_out_episodes(0, 3)
    config = MethodConfig("evidence-oracle", keep_ratio=0.3)
    for episode in episodes:
        scores = evidence_priorities(episode, 4)
        view = stream_episode(model, processor, config, episode, lambda g: episode_evidence(episode, g))
        grid, kept = view.grid, view.kept
        assert grid == 4
        for frame, positions in kept.items():
            evidence = set(np.flatnonzero(scores[frame] > EVIDENCE_TIER).tolist())
            positions = set(positions.tolist())
            assert len(positions) == 5
            assert evidence <= positions if len(evidence) <= 5 else positions <= evidence
    runs = budget_runs(evidence_methods("evidence-oracle"), [0.5], draws=1)
    (result,) = measure_retention(model, processor, runs, held_out_episodes(0, 10), progress=False)
    assert result.report.overall == 100.0
