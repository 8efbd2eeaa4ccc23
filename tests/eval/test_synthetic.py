"""The synthetic benchmark: determinism, seed splits, answers re-derived from the scene states by
an independent checker, balance, closed vocabulary, and the video files decord reads."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from stc.eval.records import read_queries
from stc.eval.synthetic.episodes import (
    EVAL_SEED_OFFSET,
    REAL_TIME_TASKS,
    VOCABULARY,
    build_benchmark,
    chance_accuracy,
    episode_seed,
    generate_episode,
    iter_episodes,
    still_queries,
    tokenize,
    write_benchmark,
)
from stc.eval.synthetic.scene import SceneConfig, render_still

# sha256 of the frames and questions of train episode 0 (default config). A change means the
# benchmark changed: a code change (then update the digest on purpose) or a NumPy release that
# samples differently (then seeds no longer reproduce across machines). The frames do not depend
# on OpenCV; .ci/run checks this digest under OpenCV 4 and 5.
GOLDEN_DIGEST = "436125c9af16b199c6a1c6b6d8d663c8b79ba16995b478184a0518e2b932bc0a"


def _digest(episode) -> str:
    h = hashlib.sha256(episode.frames.tobytes())
    h.update(json.dumps([q.to_json() for q in episode.queries], sort_keys=True).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def episodes():
    return list(iter_episodes("eval", 200, render=False))


@pytest.fixture(scope="module")
def queries(episodes):
    return [q for e in episodes for q in e.queries]


# --- determinism and seeds -------------------------------------------------------------------


def test_same_seed_same_episode_and_different_seeds_differ():
    a, b, c = generate_episode(5), generate_episode(5), generate_episode(6)
    assert _digest(a) == _digest(b)
    assert [q.to_json() for q in a.queries] == [q.to_json() for q in b.queries]
    assert _digest(a) != _digest(c)
    assert not np.array_equal(a.frames, c.frames)


def test_questions_do_not_depend_on_rendering():
    drawn, skipped = generate_episode(11), generate_episode(11, render=False)
    assert skipped.frames is None
    assert [q.to_json() for q in drawn.queries] == [q.to_json() for q in skipped.queries]


def test_episode_independent_of_python_hash_seed():
    code = (
        "import hashlib, json; from stc.eval.synthetic.episodes import generate_episode; e = generate_episode(3); "
        "h = hashlib.sha256(e.frames.tobytes()); "
        "h.update(json.dumps([q.to_json() for q in e.queries], sort_keys=True).encode()); print(h.hexdigest())"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests.add(run.stdout.strip())
    assert digests == {_digest(generate_episode(3))}


def test_golden_digest():
    assert _digest(generate_episode(episode_seed("train", 0))) == GOLDEN_DIGEST


def test_frames_are_drawn_without_opencv():
    """OpenCV's anti-aliasing and fonts change between releases; the frames must not use it."""
    code = (
        "import sys; sys.modules['cv2'] = None; import hashlib; "
        "from stc.eval.synthetic.episodes import generate_episode; from stc.eval.synthetic.scene import SceneConfig, render_still; "
        "import numpy as np; e = generate_episode(3); render_still(np.random.default_rng(0), SceneConfig()); "
        "print(hashlib.sha256(e.frames.tobytes()).hexdigest())"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-500:]
    assert run.stdout.strip() == hashlib.sha256(generate_episode(3).frames.tobytes()).hexdigest()


def test_train_and_eval_seed_ranges_are_disjoint():
    assert episode_seed("train", 0) == 0
    assert episode_seed("train", EVAL_SEED_OFFSET - 1) < episode_seed("eval", 0) == EVAL_SEED_OFFSET
    with pytest.raises(ValueError):
        episode_seed("train", EVAL_SEED_OFFSET)
    with pytest.raises(ValueError):
        episode_seed("eval", -1)
    with pytest.raises(ValueError):
        episode_seed("test", 0)
    train = {q.extra["seed"] for q in build_benchmark("train", 20)}
    evaluation = {q.extra["seed"] for q in build_benchmark("eval", 20)}
    assert train.isdisjoint(evaluation)


# --- the scene -------------------------------------------------------------------------------


def test_scene_invariants(episodes):
    config = SceneConfig()
    small_high, medium_low = config.small_size[1], config.medium_size[0]
    for episode in episodes[:50]:
        assert not any(o.visible for o in episode.states[0])  # videos open empty
        for objects in episode.states:
            visible = [o for o in objects if o.visible]
            assert len(visible) <= config.max_objects
            for o in visible:
                assert o.size <= small_high or o.size >= medium_low
                assert o.size / 2 <= o.x <= config.size - 1 - o.size / 2
                assert o.size / 2 <= o.y <= config.size - 1 - o.size / 2
            for i, a in enumerate(visible):  # bounding boxes never overlap
                for b in visible[i + 1 :]:
                    reach = (a.size + b.size) / 2
                    assert abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach
        for o in episode.states[0]:  # each object is on screen for one unbroken stretch
            shown = [objects[o.id].visible for objects in episode.states]
            assert "".join("1" if s else "0" for s in shown).strip("0").count("0") == 0


def test_frames_shape_and_background_motion():
    episode = generate_episode(episode_seed("eval", 1))
    config = episode.config
    assert episode.frames.shape == (config.frames, config.size, config.size, 3)
    assert episode.frames.dtype == np.uint8
    np.testing.assert_array_equal(episode.timestamps, np.arange(config.frames) / config.fps)
    changed = np.any(episode.frames[1:] != episode.frames[:-1], axis=-1).mean(axis=(1, 2))
    assert changed.min() > 0.5  # the background moves everywhere a little


@pytest.mark.parametrize(
    "config",
    [SceneConfig(frames=48, size=128, queries=(4, 6)), SceneConfig(fps=2.0, max_objects=5, objects=(6, 10))],
)
def test_other_configs(config):
    for seed in range(10):
        episode = generate_episode(seed, config)
        assert episode.frames.shape == (config.frames, config.size, config.size, 3)
        assert all(0 <= q.time <= (config.frames - 1) / config.fps for q in episode.queries)
        _check_answers(episode.queries, episode.states, episode.config)


# --- answers, re-derived independently from the states ---------------------------------------


def _name(obj) -> str:
    if obj.shape != "glyph":
        return obj.shape
    return ("digit " if obj.glyph in "0123456789" else "letter ") + obj.glyph


def _options(prompt: str) -> list[str]:
    match = re.search(r"Options: A\. (.+) B\. (.+) C\. (.+) D\. (.+)\. Answer with the letter\.$", prompt)
    return list(match.groups())


class _Seen:
    """The checker's own reading of the states up to (and including) one frame."""

    def __init__(self, states, frame: int):
        self.now = [o for o in states[frame] if o.visible]
        self.past = [[o for o in objects if o.visible] for objects in states[: frame + 1]]
        self.all_frames = [[o for o in objects if o.visible] for objects in states]
        self.first: dict[int, int] = {}
        for f, objects in enumerate(self.past):
            for o in objects:
                self.first.setdefault(o.id, f)

    def appearance(self, object_id: int) -> str:
        obj = next(o for o in self.past[self.first[object_id]] if o.id == object_id)
        return f"{obj.colour} {_name(obj)}"

    def by_appearance(self, description: str) -> list[int]:
        """Objects seen so far that first looked like description."""
        return [i for i in self.first if self.appearance(i) == description]

    def ever_named(self, description: str) -> bool:
        """Whether any object in the whole video ever carries the noun of description."""
        noun = description.split(" ", 1)[1]
        return any(_name(o) == noun for objects in self.all_frames for o in objects)

    def history(self, object_id: int) -> list:
        return [o for objects in self.past for o in objects if o.id == object_id]


def _expected(query, states, config: SceneConfig) -> str:
    """The answer text (option text for multiple choice) recomputed from the states."""
    seen = _Seen(states, round(query.time * config.fps))
    question = re.match(r"Question: (.+?\?)", query.prompt).group(1)
    task = query.task
    if task == "rt_colour":
        noun = re.fullmatch(r"what colour is the (.+) now\?", question).group(1)
        (obj,) = [o for o in seen.now if _name(o) == noun]
        return obj.colour
    if task == "rt_shape":
        colour = re.fullmatch(r"what shape is the (\w+) object now\?", question).group(1)
        (obj,) = [o for o in seen.now if o.colour == colour]
        return obj.shape
    if task == "rt_count":
        return str(len(seen.now))
    if task == "rt_position":
        colour, noun = re.fullmatch(r"where is the (\w+) (.+) now\?", question).groups()
        (obj,) = [o for o in seen.now if o.colour == colour and _name(o) == noun]
        middle = (config.size - 1) / 2
        assert abs(obj.x - middle) > obj.size / 2 and abs(obj.y - middle) > obj.size / 2
        return ("top " if obj.y < middle else "bottom ") + ("left" if obj.x < middle else "right")
    if task == "rt_character":
        colour = re.fullmatch(r"which (\w+) character is shown now\?", question).group(1)
        (obj,) = [o for o in seen.now if o.colour == colour and o.shape == "glyph"]
        return obj.glyph
    if task == "bt_first":
        present = {}
        for option in _options(query.prompt):
            matches = seen.by_appearance(option)
            assert len(matches) <= 1
            if matches:
                present[option] = seen.first[matches[0]]
            else:
                assert not seen.ever_named(option)
        assert len(present) >= 2 and len(set(present.values())) == len(present)
        return min(present, key=present.get)
    if task in ("bt_colour_before", "bt_shape_before"):
        attribute = task.split("_")[1]
        noun = re.fullmatch(rf"what {attribute} was the (.+) before it changed {attribute}\?", question).group(1)
        (object_id,) = {o.id for objects in seen.past for o in objects if _name(o) == noun}
        values = [o.colour if attribute == "colour" else o.shape for o in seen.history(object_id)]
        distinct = [v for k, v in enumerate(values) if k == 0 or v != values[k - 1]]
        assert len(distinct) == 2
        return distinct[0]
    if task == "bt_previous":
        description = re.fullmatch(r"which object appeared just before the (.+)\?", question).group(1)
        (object_id,) = seen.by_appearance(description)
        earlier = [i for i in seen.first if seen.first[i] < seen.first[object_id]]
        latest = max(seen.first[i] for i in earlier)
        (previous,) = [i for i in earlier if seen.first[i] == latest]
        for option in _options(query.prompt):
            assert len(seen.by_appearance(option)) == 1 or not seen.ever_named(option)
        return seen.appearance(previous)
    if task == "bt_left":
        description = re.fullmatch(r"has the (.+) been shown earlier and already left\?", question).group(1)
        matches = seen.by_appearance(description)
        if not matches:
            return "No"
        (object_id,) = matches
        return "Yes" if all(o.id != object_id for o in seen.now) else "No"
    if task == "fp_appeared":
        description = re.fullmatch(r"has the (.+) appeared yet\?", question).group(1)
        return "Yes" if seen.by_appearance(description) else "No"
    if task == "fp_count":
        subject = re.fullmatch(r"how many (.+) have (?:appeared|happened) so far\?", question).group(1)
        firsts = [next(o for o in seen.past[seen.first[i]] if o.id == i) for i in seen.first]
        if subject == "objects":
            return str(len(firsts))
        if subject == "shapes":
            return str(sum(o.shape != "glyph" for o in firsts))
        if subject == "characters":
            return str(sum(o.shape == "glyph" for o in firsts))
        assert subject == "colour changes"
        changes = 0
        for before, after in zip(seen.past, seen.past[1:]):
            colours = {o.id: o.colour for o in before}
            changes += sum(1 for o in after if o.id in colours and colours[o.id] != o.colour)
        return str(changes)
    raise AssertionError(f"unknown task {task}")


def _check_answers(queries, states, config: SceneConfig) -> None:
    for q in queries:
        expected = _expected(q, states, config)
        if q.kind == "mc":
            options = _options(q.prompt)
            assert options.count(expected) == 1, (q.prompt, expected)
            assert q.answer == "ABCD"[options.index(expected)], q.prompt
        else:
            assert q.answer == expected, (q.prompt, q.answer, expected)


def test_answers_match_independent_checker(episodes):
    for episode in episodes:
        _check_answers(episode.queries, episode.states, episode.config)


def test_still_queries_ask_every_real_time_task_with_checked_answers():
    """Training questions about random stills: the benchmark's real-time writers on a one-frame
    scene, checked by the same independent checker; a count on every still; seeded."""
    config = SceneConfig()
    rng = np.random.default_rng(3)
    tasks = collections.Counter()
    for _ in range(80):
        _, objects = render_still(rng, config)
        queries = still_queries(rng, objects, config)
        _check_answers(queries, (objects,), config)
        assert "rt_count" in {q.task for q in queries}
        tasks.update(q.task for q in queries)
    assert set(tasks) == set(REAL_TIME_TASKS) == {"rt_colour", "rt_shape", "rt_count", "rt_position", "rt_character"}
    first, second = np.random.default_rng(9), np.random.default_rng(9)
    objects = render_still(first, config)[1]
    assert [q.to_json() for q in still_queries(first, objects, config)] == [
        q.to_json() for q in still_queries(second, render_still(second, config)[1], config)
    ]


def test_every_task_is_asked(queries):
    tasks = collections.Counter(q.task for q in queries)
    assert set(tasks) == {
        "rt_colour", "rt_shape", "rt_count", "rt_position", "rt_character",
        "bt_first", "bt_colour_before", "bt_shape_before", "bt_previous", "bt_left",
        "fp_appeared", "fp_count",
    }  # fmt: skip
    assert {q.extra["category"] for q in queries} == {"rt", "bt", "fp"}


# --- query records ---------------------------------------------------------------------------


def test_query_records(episodes):
    config = SceneConfig()
    for episode in episodes:
        times = [q.time for q in episode.queries]
        assert config.queries[0] - 2 <= len(times) <= config.queries[1]
        assert times == sorted(times)
        assert all(0 <= t <= (config.frames - 1) / config.fps and float(t).is_integer() for t in times)
        assert max(times) >= config.frames * 2 / 3 - 1  # something is asked late
        for k, q in enumerate(episode.queries):
            assert q.qid == f"syn-{episode.seed}-{k}"
            assert q.video == f"synthetic/{episode.seed}.avi"
            assert q.kind in ("mc", "yesno", "count") and q.answer in q.extra["choices"]
            if q.kind == "mc":
                options = _options(q.prompt)
                assert options == q.extra["options"] and len(set(options)) == 4
                assert options.count(q.extra["answer_text"]) == 1
        qids = [q.qid for q in episode.queries]
        assert len(set(qids)) == len(qids)


def test_answers_are_balanced(queries):
    letters = collections.Counter(q.answer for q in queries if q.kind == "mc")
    total = sum(letters.values())
    assert all(0.2 < letters[letter] / total < 0.3 for letter in "ABCD"), letters
    yesno = collections.Counter(q.answer for q in queries if q.kind == "yesno")
    assert 0.45 < yesno["Yes"] / (yesno["Yes"] + yesno["No"]) < 0.55, yesno
    count_questions = {(q.task, q.prompt) for q in queries if q.kind == "count"}
    for task, prompt in count_questions:  # every possible count is a common answer
        asked = [q for q in queries if (q.task, q.prompt) == (task, prompt)]
        counts = collections.Counter(q.answer for q in asked)
        choices = asked[0].extra["choices"]
        assert all(counts[c] / len(asked) > 0.3 / len(choices) for c in choices), (prompt, counts)
    sizes = collections.Counter(q.extra["target_size"] for q in queries if q.extra["target_size"])
    assert sizes["small"] / (sizes["small"] + sizes["medium"]) > 0.35, sizes


def test_chance_accuracy(queries):
    chance = chance_accuracy(queries)
    assert chance["rt_colour"] == chance["bt_first"] == 0.25
    assert chance["bt_left"] == chance["fp_appeared"] == 0.5
    assert chance["rt_count"] == pytest.approx(0.2)
    assert 0.25 < chance["all"] < 0.4
    assert set(chance) >= {"all", "rt", "bt", "fp"}


# --- vocabulary ------------------------------------------------------------------------------


def test_tokenize_rule():
    assert tokenize("Question: what colour is the letter K now? Options: A. red B. 7.") == [
        "Question", ":", "what", "colour", "is", "the", "letter", "K", "now", "?",
        "Options", ":", "A", ".", "red", "B", ".", "7", ".",
    ]  # fmt: skip
    assert tokenize("12") == ["1", "2"]


def test_prompts_and_answers_use_the_closed_vocabulary(queries):
    vocabulary = set(VOCABULARY)
    assert len(vocabulary) == len(VOCABULARY)
    used = {token for q in queries for token in tokenize(q.prompt)}
    assert used <= vocabulary, used - vocabulary
    assert all(tokenize(q.answer) == [q.answer] and q.answer in vocabulary for q in queries)


# --- files -----------------------------------------------------------------------------------


def test_written_benchmark_round_trips_through_decord(tmp_path):
    decord = pytest.importorskip("decord")
    path = write_benchmark(tmp_path, split="eval", n_episodes=2)
    written = read_queries(path)
    episodes = list(iter_episodes("eval", 2))
    assert [q.to_json() for q in written] == [q.to_json() for e in episodes for q in e.queries]
    for episode in episodes:
        reader = decord.VideoReader(str(tmp_path / episode.video), num_threads=1)
        assert len(reader) == episode.config.frames
        assert reader.get_avg_fps() == pytest.approx(episode.config.fps)
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()
        np.testing.assert_array_equal(frames, episode.frames)  # FFV1 is lossless


# --- the NumPy rasteriser ---------------------------------------------------------------------


def test_raster_blends_by_exact_coverage():
    from stc.eval.synthetic import raster

    image = np.full((8, 8, 3), 100, np.uint8)
    # A square from x, y = 1.5 to 4.5 covers pixels 2..4 whole; the half-open edge x = 5.0 covers
    # half of column 5 (pixel 5 spans 4.5..5.5): 8 of its 16 points lie at x <= 5.
    raster.fill(image, (200, 0, 100), (1.5, 1.5, 5.0, 4.5), raster.rectangle(1.5, 1.5, 5.0, 4.5))
    assert (image[2:5, 2:5] == (200, 0, 100)).all()
    assert (image[2:5, 5] == (150, 50, 100)).all()
    assert (image[:2] == 100).all() and (image[5:] == 100).all() and (image[:, :2] == 100).all()


def test_every_character_of_the_benchmark_has_a_glyph_that_stays_in_its_box():
    from stc.eval.synthetic import raster
    from stc.eval.synthetic.scene import GLYPHS

    assert set(GLYPHS) <= set(raster.GLYPH_STROKES)
    inked = set()
    for char in GLYPHS:
        image = np.zeros((40, 40, 3), np.uint8)
        raster.draw_glyph(image, char, 20, 20, 20, (255, 255, 255))
        rows, cols = np.nonzero(image[..., 0])
        assert rows.min() >= 9 and rows.max() <= 31 and cols.min() >= 9 and cols.max() <= 31, char
        inked.add(image.tobytes())
    assert len(inked) == len(GLYPHS)  # no two characters look the same
    with pytest.raises(ValueError, match="no glyph"):
        raster.draw_glyph(np.zeros((40, 40, 3), np.uint8), "Q", 20, 20, 20, (255, 255, 255))
