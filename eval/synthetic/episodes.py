"""Synthetic streaming video QA: a procedurally generated testbed that measures accuracy in minutes.

Each episode is a short video (default 32 frames of 96 x 96 RGB at 1 frame per second) drawn from an
integer seed: coloured shapes (circle, square, triangle, star, cross, diamond, ring) and characters
(capital letters and digits) in six colours (red, green, blue, yellow, white, purple) appear on a
drifting, low-contrast textured background, move slowly, often change colour or shape once, and
leave. At most four are on screen at once; about half are small (10-14 px, about one ViT patch),
the rest medium (20-28 px). Every answer is computed from the per-frame scene state, never from pixels.
Questions are asked at frame times, OVO-Bench style, about what could be seen up to that moment
(about 10 per episode, at least one in the last third of the video):

  task              question                                            share  chance
  Real-time perception ("rt", 42%), about the frame at the query time:
  rt_colour         colour of the <shape or character> now                8%    1/4
  rt_shape          shape of the <colour> object now                      9%    1/4
  rt_count          how many objects are visible now (0-4)                8%    1/5
  rt_position       quadrant of the <colour> <object> now                 8%    1/4
  rt_character      which <colour> character is shown now                 8%    1/4
  Backward tracing ("bt", 36%), about earlier frames:
  bt_first          which of four objects appeared first                  8%    1/4
  bt_colour_before  colour of <object> before it changed colour           8%    1/4
  bt_shape_before   shape of <object> before it changed shape             2%    1/4
  bt_previous       which object appeared just before <object>           10%    1/4
  bt_left           has <object> been shown earlier and already left      8%    1/2
  Forward probes ("fp", 22%), the same question asked as the video goes on:
  fp_appeared       has <object> appeared yet (before and after it does)  12%   1/2
  fp_count          how many objects (0-4), shapes (0-2), characters      10%   1/5 or 1/3
                    (0-2) have appeared, colour changes (0-2) happened, so far

Chance is the accuracy of a uniform guesser (`chance_accuracy`): 0.24 for rt, 0.30 for bt, 0.41
for fp, 0.30 overall (shares and chance measured on 2000 eval episodes). Multiple choice has four
options A-D with the correct letter uniform, Yes/No is balanced, counts are near uniform over their
range; distractors are of the answer's kind, and options naming objects absent from the video copy
the kind of a present one and never share a colour with another option, so the text alone gives
little away: a bag-of-words model trained on 6000 episodes without frames scores within about 3
points of chance on every task (highest on fp_count, whose count priors are not quite flat). About half of the questions about one object are about a small one.

Prompts use a closed vocabulary of 93 tokens (`VOCABULARY`, split by `tokenize`); answers are
single tokens (A-D, Yes/No, 0-4). Train and eval episodes come from disjoint seed ranges
(`episode_seed`); `write_benchmark` writes lossless FFV1 videos and a queries.jsonl of `Query`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from stc.eval.records import Query, write_queries
from stc.eval.synthetic.scene import (
    COLOURS,
    GLYPH,
    GLYPHS,
    SHAPES,
    ObjectState,
    SceneConfig,
    SceneStates,
    noun,
    render_frames,
    simulate_scene,
)
from stc.integrations.engine.prompt import lettered_options

SPLITS = ("train", "eval")
EVAL_SEED_OFFSET = 10**9  # train seeds are [0, 1e9), eval seeds [1e9, 2e9)
OPTION_LETTERS = ("A", "B", "C", "D")
YES, NO = "Yes", "No"
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
VIDEO_DIR = "synthetic"

_FORMATS = {
    "mc": "Question: {question} Options: {options}. Answer with the letter.",
    "yesno": "Question: {question} Answer Yes or No.",
    "count": "Question: {question} Answer with a number.",
}
QUESTIONS = {
    "rt_colour": "what colour is the {noun} now?",
    "rt_shape": "what shape is the {colour} object now?",
    "rt_count": "how many objects are visible now?",
    "rt_position": "where is the {colour} {noun} now?",
    "rt_character": "which {colour} character is shown now?",
    "bt_first": "which of these appeared first?",
    "bt_colour_before": "what colour was the {noun} before it changed colour?",
    "bt_shape_before": "what shape was the {noun} before it changed shape?",
    "bt_previous": "which object appeared just before the {description}?",
    "bt_left": "has the {description} been shown earlier and already left?",
    "fp_appeared": "has the {description} appeared yet?",
}
COUNT_QUESTIONS = {  # fp_count subject -> (question, largest count asked)
    "objects": ("how many objects have appeared so far?", 4),
    "shapes": ("how many shapes have appeared so far?", 2),
    "characters": ("how many characters have appeared so far?", 2),
    "colour changes": ("how many colour changes have happened so far?", 2),
}

_TOKEN = re.compile(r"[A-Za-z]+|[0-9]|[^\sA-Za-z0-9]")


def tokenize(text: str) -> list[str]:
    """Reference split: runs of letters, single digits and single punctuation marks; case is kept
    ("Yes", "K" and "what" are distinct tokens), whitespace only separates."""
    return _TOKEN.findall(text)


def _vocabulary() -> tuple[str, ...]:
    texts = [
        *_FORMATS.values(),
        *QUESTIONS.values(),
        *(question for question, _ in COUNT_QUESTIONS.values()),
        *COLOURS,
        *SHAPES,
        *QUADRANTS,
        *(noun(GLYPH, g) for g in GLYPHS),
        *OPTION_LETTERS,
        YES,
        NO,
        *(str(d) for d in range(10)),
    ]
    return tuple(sorted({token for text in texts for token in tokenize(re.sub(r"\{\w+\}", " ", text))}))


VOCABULARY = _vocabulary()  # every token any prompt or answer can contain


@dataclass
class Episode:
    """One synthetic video with its ground truth and questions (frames None when not rendered)."""

    seed: int
    config: SceneConfig
    frames: np.ndarray | None  # [F, H, W, 3] uint8 RGB
    timestamps: np.ndarray  # [F] seconds
    states: SceneStates  # [frame][object id]
    queries: list[Query]

    @property
    def video(self) -> str:
        return video_name(self.seed)


def video_name(seed: int) -> str:
    """The episode's video file, relative to a benchmark directory (Query.video)."""
    return f"{VIDEO_DIR}/{seed}.avi"


def episode_seed(split: str, index: int) -> int:
    """Seed of the index-th episode of a split; train and eval seed ranges never overlap."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= index < EVAL_SEED_OFFSET:
        raise ValueError(f"episode index must be in [0, {EVAL_SEED_OFFSET}), got {index}")
    return index + (EVAL_SEED_OFFSET if split == "eval" else 0)


def generate_episode(seed: int, config: SceneConfig | None = None, render: bool = True) -> Episode:
    """The episode of a seed: same seed and config, same frames and questions, bit for bit.
    render=False skips drawing (the questions do not depend on it)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    config = config or SceneConfig()
    scene_seed, background_seed, question_seed = np.random.SeedSequence(int(seed)).spawn(3)
    states = simulate_scene(_generator(scene_seed), config)
    frames = render_frames(_generator(background_seed), states, config) if render else None
    drafts = _ask_questions(_generator(question_seed), _History(states), config)
    queries = [_to_query(int(seed), k, draft, config) for k, draft in enumerate(drafts)]
    timestamps = np.arange(config.frames) / config.fps
    return Episode(int(seed), config, frames, timestamps, states, queries)


def iter_episodes(
    split: str, n_episodes: int, first_index: int = 0, config: SceneConfig | None = None, render: bool = True
) -> Iterator[Episode]:
    for index in range(first_index, first_index + n_episodes):
        yield generate_episode(episode_seed(split, index), config, render)


def build_benchmark(
    split: str, n_episodes: int, first_index: int = 0, config: SceneConfig | None = None
) -> list[Query]:
    """The questions of n_episodes consecutive episodes of a split (videos not rendered)."""
    episodes = iter_episodes(split, n_episodes, first_index, config, render=False)
    return [q for episode in episodes for q in episode.queries]


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """Lossless FFV1 in AVI: decord reads back the exact RGB frames, frame count and fps."""
    import cv2  # only here: rendering the frames never touches OpenCV

    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot open an FFV1 video writer for {path}")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def write_benchmark(
    out_dir: str | os.PathLike,
    split: str = "eval",
    n_episodes: int = 100,
    first_index: int = 0,
    config: SceneConfig | None = None,
) -> Path:
    """Write out_dir/synthetic/<seed>.avi for each episode and out_dir/queries.jsonl (videos are
    relative to out_dir, the run's video root). Returns the queries file."""
    out_dir = Path(out_dir)
    (out_dir / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    queries = []
    for episode in iter_episodes(split, n_episodes, first_index, config):
        write_video(out_dir / episode.video, episode.frames, episode.config.fps)
        queries.extend(episode.queries)
    path = out_dir / "queries.jsonl"
    write_queries(queries, path)
    return path


def chance_accuracy(queries: Iterable[Query]) -> dict[str, float]:
    """Expected accuracy of a uniform guesser over each query's possible answers, averaged per
    category ("rt", "bt", "fp"), per task and over all queries ("all")."""
    groups: dict[str, list[float]] = {}
    for q in queries:
        chance = 1.0 / len(q.extra["choices"])
        for key in ("all", q.extra["category"], q.task):
            groups.setdefault(key, []).append(chance)
    return {key: float(np.mean(values)) for key, values in groups.items()}


def _generator(seed_sequence: np.random.SeedSequence) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed_sequence))


class _History:
    """What happened in an episode, read off its per-frame states."""

    def __init__(self, states: SceneStates):
        self.states = states
        self.frames = len(states)
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        for frame, objects in enumerate(states):
            for obj in objects:
                if obj.visible:
                    self.first.setdefault(obj.id, frame)
                    self.last[obj.id] = frame
        self.order = sorted(self.first, key=self.first.__getitem__)  # ids by first appearance
        self.appearance = {i: states[self.first[i]][i] for i in self.order}
        self.nouns = {obj.noun for objects in states for obj in objects if obj.visible}
        self.changes: list[tuple[int, ObjectState, ObjectState]] = []  # (frame, before, after)
        for frame in range(1, self.frames):
            for before, after in zip(states[frame - 1], states[frame]):
                if before.visible and after.visible and (before.colour, before.noun) != (after.colour, after.noun):
                    self.changes.append((frame, before, after))

    def visible(self, frame: int) -> list[ObjectState]:
        return [obj for obj in self.states[frame] if obj.visible]

    def appeared(self, frame: int) -> list[int]:
        """Ids of the objects seen at or before frame, in order of appearance."""
        return [i for i in self.order if self.first[i] <= frame]

    def description(self, object_id: int) -> str:
        """Colour and noun when it first appeared, e.g. "red circle"."""
        obj = self.appearance[object_id]
        return f"{obj.colour} {obj.noun}"


@dataclass
class _Draft:
    """A question before its prompt is written: answer is the correct option's text for mc."""

    frame: int
    task: str
    kind: str
    question: str
    answer: str
    options: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    target: ObjectState | None = None  # the object the answer is about, if any

    @property
    def prompt(self) -> str:
        options = " ".join(lettered_options(self.options, keep_lettered=False))
        return _FORMATS[self.kind].format(question=self.question, options=options)


def _mc(rng, frame, task, question, answer, distractors, target=None) -> _Draft:
    options = [answer, *distractors]
    assert len(options) == len(OPTION_LETTERS) == len(set(options)), options
    shuffled = tuple(options[i] for i in rng.permutation(len(options)))
    return _Draft(frame, task, "mc", question, answer, shuffled, OPTION_LETTERS, target)


def _yesno(frame, task, question, yes: bool, target=None) -> _Draft:
    return _Draft(frame, task, "yesno", question, YES if yes else NO, (), (YES, NO), target)


def _count(frame, task, question, value: int, largest: int) -> _Draft:
    return _Draft(frame, task, "count", question, str(value), (), tuple(str(v) for v in range(largest + 1)))


def _sample(rng, items: list, k: int) -> list:
    """k distinct items in random order."""
    return [items[i] for i in rng.choice(len(items), size=k, replace=False)]


def _pick(rng, candidates: list[tuple[int, object]]):
    """A uniformly random frame among those with candidates, then a random candidate of it."""
    if not candidates:
        return None
    frames = sorted({frame for frame, _ in candidates})
    frame = frames[int(rng.integers(len(frames)))]
    at_frame = [item for f, item in candidates if f == frame]
    return frame, at_frame[int(rng.integers(len(at_frame)))]


def _phantoms(rng, history: _History, count: int, avoid_colours: Iterable[str] = ()) -> list[str]:
    """Descriptions of objects that never appear in the episode. Each copies the kind (shape or
    character) of a random real object and takes a random colour not in avoid_colours, so that
    text alone cannot tell absent objects from present ones."""
    taken = set(history.nouns)
    avoid = set(avoid_colours)
    descriptions = []
    for _ in range(count):
        model = history.appearance[history.order[int(rng.integers(len(history.order)))]]
        shapes = [s for s in SHAPES if s not in taken]
        glyphs = [noun(GLYPH, g) for g in GLYPHS if noun(GLYPH, g) not in taken]
        names = (glyphs if model.shape == GLYPH else shapes) or shapes or glyphs
        name = names[int(rng.integers(len(names)))]
        colours = [c for c in COLOURS if c not in avoid]
        colour = colours[int(rng.integers(len(colours)))]
        taken.add(name)
        avoid.add(colour)
        descriptions.append(f"{colour} {name}")
    return descriptions


def _distinct_colours(history: _History, object_ids: list[int], count: int, avoid_colours: Iterable[str]) -> list[int]:
    """The first count of object_ids whose colours at appearance differ from each other and from
    avoid_colours (options of one question never share a colour, whether present or absent)."""
    chosen: list[int] = []
    used = set(avoid_colours)
    for i in object_ids:
        colour = history.appearance[i].colour
        if len(chosen) < count and colour not in used:
            chosen.append(i)
            used.add(colour)
    return chosen


def _quadrant(obj: ObjectState, frame_size: int) -> str | None:
    """Quadrant holding the whole object, None when it straddles a middle line."""
    centre = (frame_size - 1) / 2
    if abs(obj.x - centre) <= obj.size / 2 + 1 or abs(obj.y - centre) <= obj.size / 2 + 1:
        return None
    return f"{'top' if obj.y < centre else 'bottom'} {'left' if obj.x < centre else 'right'}"


def _ask_colour_now(rng, history: _History, config: SceneConfig, room: int) -> list[_Draft]:
    candidates = [(f, obj) for f in range(history.frames) for obj in history.visible(f)]
    if not (picked := _pick(rng, candidates)):
        return []
    frame, obj = picked
    distractors = _sample(rng, [c for c in COLOURS if c != obj.colour], 3)
    return [_mc(rng, frame, "rt_colour", QUESTIONS["rt_colour"].format(noun=obj.noun), obj.colour, distractors, obj)]


def _ask_shape_now(rng, history: _History, config: SceneConfig, room: int) -> list[_Draft]:
    candidates = []
    for f in range(history.frames):
        visible = history.visible(f)
        colours = [o.colour for o in visible]
        candidates += [(f, o) for o in visible if o.shape != GLYPH and colours.count(o.colour) == 1]
    if not (picked := _pick(rng, candidates)):
        return []
    frame, obj = picked
    distractors = _sample(rng, [s for s in SHAPES if s != obj.shape], 3)
    question = QUESTIONS["rt_shape"].format(colour=obj.colour)
    return [_mc(rng, frame, "rt_shape", question, obj.shape, distractors, obj)]


def _ask_count_now(rng, history: _History, config: SceneConfig, room: int) -> list[_Draft]:
    target = int(rng.integers(config.max_objects + 1))
    frames = [f for f in range(history.frames) if len(history.visible(f)) == target]
    if not frames:
        return []
    frame = frames[int(rng.integers(len(frames)))]
    return [_count(frame, "rt_count", QUESTIONS["rt_count"], target, config.max_objects)]


def _ask_position_now(rng, history: _History, config: SceneConfig, room: int) -> list[_Draft]:
    candidates = [
        (f, o) for f in range(history.frames) for o in history.visible(f) if _quadrant(o, config.size) is not None
    ]
    if not (picked := _pick(rng, candidates)):
        return []
    frame, obj = picked
    answer = _quadrant(obj, config.size)
    distractors = [q for q in QUADRANTS if q != answer]
    question = QUESTIONS["rt_position"].format(colour=obj.colour, noun=obj.noun)
    return [_mc(rng, frame, "rt_position", question, answer, distractors, obj)]


def _ask_character_now(rng, history: _History, config: SceneConfig, room: int) -> list[_Draft]:
    candidates = []
    for f in range(history.frames):
        glyphs = [o for o in history.visible(f) if o.shape == GLYPH]
        colours = [o.colour for o in glyphs]
        candidates += [(f, o) for o in glyphs if colours.count(o.colour) == 1]
    if not (picked := _pick(rng, candidates)):
        return []
    frame, obj = picked
    distractors = _sample(rng, [g for g in GLYPHS if g != obj.glyph], 3)
    question = QUESTIONS["rt_character"].format(colour=obj.colour)
    return [_mc(rng, frame, "rt_character", question, obj.glyph, distractors, obj)]


def _ask_first(rng, history: _History, config: SceneConfig, room: int) -> list[_Draft]:
    frames = [f for f in range(history.frames) if len(history.appeared(f)) >= 2]
    if not frames:
        return []
    frame = frames[int(rng.integers(len(frames)))]
    appeared = history.appeared(frame)
    wanted = int(rng.integers(2, min(4, len(appeared)) + 1))
    shown = _distinct_colours(history, _sample(rng, appeared, len(appeared)), wanted, ())
    if len(shown) < 2:
        return []
    earliest = min(shown, key=history.first.__getitem__)
    distractors = [history.description(i) for i in shown if i != earliest]
    distractors += _phantoms(rng, history, 3 - len(distractors), [history.appearance[i].colour for i in shown])
    answer = history.description(earliest)
    return [_mc(rng, frame, "bt_first", QUESTIONS["bt_first"], answer, distractors, history.appearance[earliest])]


def _ask_before_change(rng, history: _History, config: SceneConfig, room: int, attribute: str) -> list[_Draft]:
    candidates = [
        (f, (before, after))
        for c, before, after in history.changes
        if getattr(before, attribute) != getattr(after, attribute)
        for f in range(c, history.frames)
    ]
    if not (picked := _pick(rng, candidates)):
        return []
    frame, (before, after) = picked
    task = f"bt_{attribute}_before"
    question = QUESTIONS[task].format(noun=after.noun)
    if attribute == "colour":
        others = [c for c in COLOURS if c not in (before.colour, after.colour)]
        distractors = [after.colour, *_sample(rng, others, 2)]
    else:
        distractors = _sample(rng, [s for s in SHAPES if s not in (before.shape, after.shape)], 3)
    return [_mc(rng, frame, task, question, getattr(before, attribute), distractors, after)]


def _ask_colour_before(rng, history: _History, config: SceneConfig, room: int) -> list[_Draft]:
    return _ask_before_change(rng, history, config, room, "colour")


def _ask_shape_before(rng, history: _History, config: SceneConfig, room: int) -> list[_Draft]:
    return _ask_before_change(rng, history, config, room, "shape")


def _ask_previous(rng, history: _History, config: SceneConfig, room: int) -> list[_Draft]:
    """Asked when the object and the one before it appeared in different colours; the options
    and the object asked about all have different colours."""
    candidates = [
        (f, i)
        for f in range(history.frames)
        for previous, i in zip(history.appeared(f), history.appeared(f)[1:])
        if history.appearance[previous].colour != history.appearance[i].colour
    ]
    if not (picked := _pick(rng, candidates)):
        return []
    frame, object_id = picked
    previous = history.order[history.order.index(object_id) - 1]
    others = [i for i in history.appeared(frame) if i not in (object_id, previous)]
    used = [history.appearance[object_id].colour, history.appearance[previous].colour]
    shuffled = _sample(rng, others, len(others))
    real = _distinct_colours(history, shuffled, int(rng.integers(min(3, len(others)) + 1)), used)
    used += [history.appearance[i].colour for i in real]
    distractors = [history.description(i) for i in real] + _phantoms(rng, history, 3 - len(real), used)
    question = QUESTIONS["bt_previous"].format(description=history.description(object_id))
    target = history.appearance[previous]
    return [_mc(rng, frame, "bt_previous", question, history.description(previous), distractors, target)]


def _ask_left(rng, history: _History, config: SceneConfig, room: int) -> list[_Draft]:
    """Yes: seen and gone. No: on screen now, not seen yet, or never in the video. Asked only in
    episodes where both answers are possible, each half of the time."""
    frames = range(history.frames)
    gone = [(f, i) for f in frames for i in history.order if history.last[i] < f]
    if not gone:
        return []
    if rng.random() < 0.5:
        frame, object_id = _pick(rng, gone)
        question = QUESTIONS["bt_left"].format(description=history.description(object_id))
        return [_yesno(frame, "bt_left", question, True, history.appearance[object_id])]
    on_screen = [(f, o.id) for f in frames for o in history.visible(f)]
    coming = [(f, i) for f in frames for i in history.order if history.first[i] > f]
    real = [candidates for candidates in (on_screen, coming) if candidates]
    reason = int(rng.integers(len(real) + 1))  # the last one: an object absent from the video
    if reason == len(real):
        frame = int(rng.integers(history.frames))
        description, target = _phantoms(rng, history, 1)[0], None
    else:
        frame, object_id = _pick(rng, real[reason])
        description, target = history.description(object_id), history.appearance[object_id]
    return [_yesno(frame, "bt_left", QUESTIONS["bt_left"].format(description=description), False, target)]


def _ask_appeared(rng, history: _History, config: SceneConfig, room: int) -> list[_Draft]:
    """The same question before and after the object appears, as many times each."""
    late = [i for i in history.order if history.first[i] >= 1]
    if not late or room < 2:
        return []
    object_id = late[int(rng.integers(len(late)))]
    appears = history.first[object_id]
    times = 2 if room >= 4 and min(appears, history.frames - appears) >= 2 and rng.random() < 0.5 else 1
    before = rng.choice(appears, size=times, replace=False)
    after = appears + rng.choice(history.frames - appears, size=times, replace=False)
    question = QUESTIONS["fp_appeared"].format(description=history.description(object_id))
    target = history.appearance[object_id]
    asked = [(int(f), False) for f in before] + [(int(f), True) for f in after]
    return [_yesno(f, "fp_appeared", question, seen, target) for f, seen in sorted(asked)]


def _ask_count_so_far(rng, history: _History, config: SceneConfig, room: int) -> list[_Draft]:
    subjects = list(COUNT_QUESTIONS)
    subject = subjects[int(rng.integers(len(subjects)))]
    question, largest = COUNT_QUESTIONS[subject]
    target = int(rng.integers(largest + 1))
    frames = [f for f in range(history.frames) if _count_so_far(history, subject, f) == target]
    if not frames:
        return []
    frame = frames[int(rng.integers(len(frames)))]
    return [_count(frame, "fp_count", question, target, largest)]


def _count_so_far(history: _History, subject: str, frame: int) -> int:
    if subject == "colour changes":
        return sum(1 for c, before, after in history.changes if c <= frame and before.colour != after.colour)
    appeared = [history.appearance[i] for i in history.appeared(frame)]
    if subject == "shapes":
        return sum(1 for obj in appeared if obj.shape != GLYPH)
    if subject == "characters":
        return sum(1 for obj in appeared if obj.shape == GLYPH)
    return len(appeared)


# task -> (question writer, relative frequency of attempts); fp_appeared yields 2 or 4 queries.
_TASKS: dict[str, tuple[Callable[..., list[_Draft]], float]] = {
    "rt_colour": (_ask_colour_now, 1.0),
    "rt_shape": (_ask_shape_now, 1.0),
    "rt_count": (_ask_count_now, 1.0),
    "rt_position": (_ask_position_now, 1.0),
    "rt_character": (_ask_character_now, 1.0),
    "bt_first": (_ask_first, 1.3),
    "bt_colour_before": (_ask_colour_before, 1.2),
    "bt_shape_before": (_ask_shape_before, 1.5),
    "bt_previous": (_ask_previous, 1.3),
    "bt_left": (_ask_left, 1.0),
    "fp_appeared": (_ask_appeared, 0.6),
    "fp_count": (_ask_count_so_far, 1.2),
}
REAL_TIME_TASKS = tuple(task for task in _TASKS if task.startswith("rt_"))


def _tasks(config: SceneConfig) -> dict[str, tuple[Callable[..., list[_Draft]], float]]:
    """The question writers of the config's generator version (v3: `questions_v3`)."""
    if config.version < 3:
        return _TASKS
    from stc.eval.synthetic.questions_v3 import V3_TASKS

    return {**_TASKS, **V3_TASKS}


def _ask_questions(rng, history: _History, config: SceneConfig) -> list[_Draft]:
    """Draw tasks at random until the episode has its number of distinct questions, at least one
    of them in the last third of the video; in time order. A backward-tracing question is not
    repeated with the same answer at another time."""
    wanted = int(rng.integers(config.queries[0], config.queries[1] + 1))
    late = config.frames * 2 // 3
    tasks = _tasks(config)
    names = list(tasks)
    weights = np.array([tasks[name][1] for name in names])
    weights /= weights.sum()
    drafts: list[_Draft] = []
    asked: set[tuple] = set()
    for _ in range(10 * wanted):
        if len(drafts) >= wanted:
            break
        writer = tasks[names[int(rng.choice(len(names), p=weights))]][0]
        new = writer(rng, history, config, wanted - len(drafts))
        keys = {(d.task, d.question, d.answer) if d.task.startswith("bt") else (d.frame, d.prompt) for d in new}
        last_slot_early = len(drafts) + len(new) >= wanted and all(d.frame < late for d in drafts + new)
        if new and not keys & asked and not last_slot_early:
            drafts += new
            asked |= keys
    return sorted(drafts, key=lambda d: d.frame)


def still_queries(rng: np.random.Generator, objects: Iterable[ObjectState], config: SceneConfig,
                  rounds: int = 2) -> list[Query]:
    """Real-time questions about one still (a one-frame scene, see `render_still`), written by the
    benchmark's own question writers: each real-time task asked up to `rounds` times (repeats
    dropped). Training data for the testbed, where fresh scenes teach perception faster than the
    32 frames of an episode. Query ids and video names are those of seed 0 (not a real episode)."""
    history = _History((tuple(replace(o, id=k) for k, o in enumerate(objects)),))
    drafts: list[_Draft] = []
    asked: set[str] = set()
    for _ in range(rounds):
        for task in REAL_TIME_TASKS:
            for _attempt in range(4 * (config.max_objects + 1)):  # a count question needs its count drawn
                new = [d for d in _TASKS[task][0](rng, history, config, 1) if d.prompt not in asked]
                if new:
                    drafts += new
                    asked.update(d.prompt for d in new)
                    break
    return [_to_query(0, k, draft, config) for k, draft in enumerate(drafts)]


def _to_query(seed: int, k: int, draft: _Draft, config: SceneConfig) -> Query:
    answer = OPTION_LETTERS[draft.options.index(draft.answer)] if draft.kind == "mc" else draft.answer
    target = draft.target
    small_limit = config.size_range(small=True)[1]
    extra = {
        "category": draft.task.split("_")[0],
        "seed": seed,
        "frame": draft.frame,
        "choices": list(draft.choices),
        "options": list(draft.options),
        "answer_text": draft.answer,
        "target_id": None if target is None else target.id,
        "target_size": None if target is None else ("small" if target.size <= small_limit else "medium"),
    }
    return Query(
        qid=f"syn-{seed}-{k}",
        video=video_name(seed),
        time=draft.frame / config.fps,
        prompt=draft.prompt,
        answer=answer,
        task=draft.task,
        kind=draft.kind,
        extra=extra,
    )
