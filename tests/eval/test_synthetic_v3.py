"""The v3 generator (SceneConfig(version=3), stc.eval.synthetic.questions_v3): a scene that is the
same at every time, yes/no questions that draw their time before their answer, counts whose
answers are uniform; v2 episodes stay as they were."""

from collections import Counter

import numpy as np
import pytest

from stc.eval.records import Query
from stc.eval.synthetic.episodes import Episode
from stc.eval.synthetic.questions_v3 import RECENT_LARGEST, RECENT_SECONDS, recent_arrivals
from stc.eval.synthetic.scene import ObjectState

from stc.eval.synthetic.benchmark import frames_tag
from stc.eval.synthetic.history import History
from stc.eval.synthetic.episodes import build_benchmark, episode_seed, generate_episode
from stc.eval.synthetic.evidence import episode_evidence
from stc.eval.synthetic.priors import time_only_report
from stc.eval.synthetic.scene import SceneConfig

V3 = SceneConfig(version=3)


def visible_counts(config, episodes=300):
    """[episode, frame] number of objects on screen."""
    histories = (History(generate_episode(episode_seed("train", index), config, render=False).states)
                 for index in range(episodes))
    return np.array([[len(history.visible(f)) for f in range(config.frames)] for history in histories])


def test_v3_scene_is_the_same_at_every_time():
    """No frame is empty by rule (v2: frame 0 always is) and the number on screen does not drift
    with time: its mean at every frame is within 0.3 of the overall mean (v2's ramps from 0 at
    frame 0 to about 3 at frame 20)."""
    v3, v2 = visible_counts(V3), visible_counts(SceneConfig())
    assert (v3[:, 0] > 0).mean() > 0.85 and (v2[:, 0] == 0).all()
    assert np.abs(v3.mean(axis=0) - v3.mean()).max() < 0.3
    assert np.abs(v2.mean(axis=0) - v2.mean()).max() > 1.0


def test_v3_episodes_answer_from_the_scene():
    for index in range(30):
        episode = generate_episode(episode_seed("eval", index), V3, render=False)
        history = History(episode.states)
        for query in episode.queries:
            q, target = query.extra["frame"], query.extra["target_id"]
            if query.task == "fp_appeared":
                assert (query.answer == "Yes") == (history.first[target] <= q)
            elif query.task == "bt_left":
                assert (query.answer == "Yes") == (history.last[target] < q)
            elif query.task == "rt_count":
                assert int(query.answer) == len(history.visible(q))
            elif query.task == "fp_count":
                assert f"in the last {RECENT_SECONDS} seconds" in query.prompt and q >= RECENT_SECONDS
                assert int(query.answer) == len(recent_arrivals(history, q, 1.0))
        assert all(group for e in episode_evidence(episode, 4) for group in e.groups)


def test_v3_order_questions_have_one_answer_though_objects_share_frame_0():
    """Objects already on screen when the video opens all appear at frame 0: bt_first and
    bt_previous are asked only where the answer appeared strictly before every other candidate."""
    checked = 0
    for index in range(80):
        episode = generate_episode(episode_seed("eval", index), V3, render=False)
        history = History(episode.states)
        by_description = {history.description(i): i for i in history.order}
        for query in episode.queries:
            answer = by_description.get(query.extra["answer_text"])
            if query.task == "bt_first":
                others = [by_description[o] for o in query.extra["options"] if o in by_description and by_description[o] != answer]
                assert all(history.first[answer] < history.first[i] for i in others)
                checked += 1
            elif query.task == "bt_previous":
                asked = next(i for d, i in by_description.items() if f"before the {d}?" in query.prompt)
                earlier = [i for i in history.order if history.first[i] < history.first[asked]]
                assert max(history.first[i] for i in earlier) == history.first[answer]
                assert [history.first[i] for i in earlier].count(history.first[answer]) == 1
                checked += 1
    assert checked > 50
    assert sum(len(History(generate_episode(episode_seed("eval", i), V3, render=False).states).visible(0)) > 1
               for i in range(30)) > 10  # ties at frame 0 are common: the rule is exercised


def test_v3_count_answers_are_uniform():
    """Each count is the answer equally often (within sampling noise: 400 episodes give about 250
    questions per task)."""
    queries = build_benchmark("eval", 400, 0, V3)
    for task, largest in (("rt_count", V3.max_objects), ("fp_count", RECENT_LARGEST)):
        answers = Counter(q.answer for q in queries if q.task == task)
        total = sum(answers.values())
        assert set(answers) == {str(v) for v in range(largest + 1)} and total > 150
        assert max(answers.values()) / total < 1 / (largest + 1) + 0.07


def test_v3_recent_count_evidence_on_a_hand_built_scene():
    """"How many objects appeared in the last 8 seconds?" at frame 11 (fps 1): objects first seen
    at frames 4..11 count, each seen from its arrival; the one there from frame 0 and the one
    that came at frame 3 do not."""
    def obj(i, frames, x):
        return [ObjectState(i, "square", "", "red", 10, x, 12, f in frames) for f in range(12)]
    tracks = [obj(0, range(12), 12), obj(1, range(9, 12), 36), obj(2, range(4, 6), 60), obj(3, range(3, 12), 84)]
    states = tuple(tuple(track[f] for track in tracks) for f in range(12))
    history = History(states)
    assert recent_arrivals(history, 11, 1.0) == [2, 1]
    query = Query(qid="q0", video="v", time=11.0, prompt=f"Question: how many objects have appeared in the last "
                  f"{RECENT_SECONDS} seconds? Answer with a number.", answer="2", task="fp_count", kind="count",
                  extra={"frame": 11, "target_id": None})
    episode = Episode(0, SceneConfig(frames=12, version=3), None, np.arange(12.0), states, [query])
    (evidence,) = episode_evidence(episode, 4)
    assert [[(i.frame, i.object_id) for i in g] for g in evidence.groups] == [[(4, 2), (5, 2)], [(9, 1), (10, 1), (11, 1)]]


def test_v3_yes_no_answers_do_not_follow_the_question_time():
    """The time-only guesser (300 training, 100 held-out episodes) is near chance (50%) on the
    rewritten tasks; on v2 the same guesser scores far above it. Measured here: v3 fp_appeared
    48.5% (169 questions), bt_left 47.8% (90); v2 83.1%, 74.7%. With 2,000 / 300 episodes: v3
    48.8%, 50.2%; v2 85.8%, 71.6%."""
    v3, _ = time_only_report(300, 0, 100, V3)
    v2, _ = time_only_report(300, 0, 100)
    for task in ("fp_appeared", "bt_left"):
        assert abs(v3.tasks[task] - 50.0) < 10.0
        assert v2.tasks[task] > 65.0


def test_v2_is_the_default_and_v3_gets_its_own_folders():
    assert SceneConfig().version == 2 and frames_tag(V3) == "-v3" and frames_tag(SceneConfig()) == ""
    assert build_benchmark("eval", 3) == build_benchmark("eval", 3, config=SceneConfig(version=2))
    with pytest.raises(ValueError, match="version must be 2 or 3"):
        SceneConfig(version=1)


def test_v3_time_only_guesser_is_within_3_points_of_chance_in_every_category():
    """The bar of issue 33 on generated episodes (1,000 training, 200 held-out, about 2,000
    questions): v3 within 3 points of chance in rt, bt, fp and overall (measured: -0.9, +1.6,
    +1.1, +0.4); v2 fails it in every category (+5.4, +4.7, +30.4, +10.5), so the tolerance
    catches a leak of that size."""
    for config, leaky in ((V3, False), (SceneConfig(), True)):
        report, chance = time_only_report(1000, 0, 200, config)
        above = {**{c: report.categories[c] - chance[c] for c in ("rt", "bt", "fp")}, "all": report.overall - chance["all"]}
        if leaky:
            assert all(value > 3.0 for value in above.values()), above
        else:
            assert all(abs(value) < 3.0 for value in above.values()), above


def test_order_questions_and_their_evidence_on_a_hand_built_scene_with_a_tie_at_frame_0():
    """Objects 0 and 1 are there when the video opens (a tie at frame 0), 2 comes at frame 3 and
    3 at frame 5. "Just before" is asked only about 3 (answer 2: about 2 the answer would be
    0 or 1); "first" only among options whose earliest is one object. The evidence of "just
    before 3" is 2 seen before 3 came, and 3 seen."""
    from stc.eval.synthetic.episodes import to_query
    from stc.eval.synthetic.questions import TASKS

    def obj(i, colour, shape, frames, x):
        return [ObjectState(i, shape, "", colour, 10, x, 12, f in frames) for f in range(10)]
    tracks = [obj(0, "red", "circle", range(10), 12), obj(1, "blue", "square", range(10), 36),
              obj(2, "green", "star", range(3, 10), 60), obj(3, "white", "cross", range(5, 10), 84)]
    states = tuple(tuple(track[f] for track in tracks) for f in range(10))
    history = History(states)
    config = SceneConfig(frames=10, version=3)
    previous, first = [], []
    for seed in range(60):
        rng = np.random.default_rng(seed)
        previous += TASKS["bt_previous"][0](rng, history, config, 1)
        first += TASKS["bt_first"][0](rng, history, config, 1)
    assert previous and {(d.question, d.answer) for d in previous} == {
        ("which object appeared just before the white cross?", "green star")}
    for draft in first:
        present = [history.order[[history.description(i) for i in history.order].index(o)]
                   for o in draft.options if o in {history.description(i) for i in history.order}]
        assert draft.answer == history.description(min(present, key=history.first.__getitem__))
        assert sorted(history.first[i] for i in present).count(0) <= 1
    assert first and any(draft.answer == "green star" for draft in first)
    draft = next(d for d in previous if d.frame >= 6)
    episode = Episode(0, config, None, np.arange(10.0), states, [to_query(0, 0, draft, config)])
    (evidence,) = episode_evidence(episode, 4)
    assert [[(i.frame, i.object_id) for i in g] for g in evidence.groups] == [
        [(3, 2), (4, 2)], [(f, 3) for f in range(5, draft.frame + 1)]]


def test_v3_words_come_after_the_v2_vocabulary():
    """The three words only v3 asks with (in, last, seconds) are appended after the sorted v2
    tokens, so a tokenizer built from the list keeps every v2 token's id; v3 prompts use only
    listed tokens."""
    from stc.eval.synthetic.questions import VOCABULARY, tokenize

    v2_used = {token for q in build_benchmark("eval", 40) for token in tokenize(q.prompt)}
    v3_used = {token for q in build_benchmark("eval", 40, 0, V3) for token in tokenize(q.prompt)}
    assert VOCABULARY[-3:] == ("in", "last", "seconds") and list(VOCABULARY[:-3]) == sorted(VOCABULARY[:-3])
    assert v2_used <= set(VOCABULARY[:-3]) and v3_used <= set(VOCABULARY) and v3_used >= {"in", "last", "seconds"}
