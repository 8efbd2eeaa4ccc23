"""The question writers of the synthetic benchmark: the prompt formats and closed vocabulary,
one writer per task (each reads the episode's `History` and returns `Draft`s), the task table
and `ask_questions`, which draws an episode's questions. Answers come from the scene state only."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from stc.eval.synthetic.history import History
from stc.eval.synthetic.scene import COLOURS, GLYPH, GLYPHS, SHAPES, ObjectState, SceneConfig, noun
from stc.integrations.engine.prompt import lettered_options

OPTION_LETTERS = ("A", "B", "C", "D")
YES, NO = "Yes", "No"
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")

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
V3_QUESTIONS = {  # the v3 generator's new wordings (`questions_v3`)
    "fp_count": "how many objects have appeared in the last {seconds} seconds?",
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


def _tokens(texts) -> set[str]:
    return {token for text in texts for token in tokenize(re.sub(r"\{\w+\}", " ", text))}


def _vocabulary() -> tuple[str, ...]:
    """The v2 tokens in sorted order, then the tokens only v3 prompts use (appended, so every v2
    token keeps its place and a tokenizer built from an earlier list keeps its ids)."""
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
    v2 = sorted(_tokens(texts))
    return (*v2, *sorted(_tokens(V3_QUESTIONS.values()) - set(v2)))


VOCABULARY = _vocabulary()  # every token any prompt or answer can contain


@dataclass
class Draft:
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


def _mc(rng, frame, task, question, answer, distractors, target=None) -> Draft:
    options = [answer, *distractors]
    assert len(options) == len(OPTION_LETTERS) == len(set(options)), options
    shuffled = tuple(options[i] for i in rng.permutation(len(options)))
    return Draft(frame, task, "mc", question, answer, shuffled, OPTION_LETTERS, target)


def _yesno(frame, task, question, yes: bool, target=None) -> Draft:
    return Draft(frame, task, "yesno", question, YES if yes else NO, (), (YES, NO), target)


def _count(frame, task, question, value: int, largest: int) -> Draft:
    return Draft(frame, task, "count", question, str(value), (), tuple(str(v) for v in range(largest + 1)))


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


def _phantoms(rng, history: History, count: int, avoid_colours: Iterable[str] = ()) -> list[str]:
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


def _distinct_colours(history: History, object_ids: list[int], count: int, avoid_colours: Iterable[str]) -> list[int]:
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


def _ask_colour_now(rng, history: History, config: SceneConfig, room: int) -> list[Draft]:
    candidates = [(f, obj) for f in range(history.frames) for obj in history.visible(f)]
    if not (picked := _pick(rng, candidates)):
        return []
    frame, obj = picked
    distractors = _sample(rng, [c for c in COLOURS if c != obj.colour], 3)
    return [_mc(rng, frame, "rt_colour", QUESTIONS["rt_colour"].format(noun=obj.noun), obj.colour, distractors, obj)]


def _ask_shape_now(rng, history: History, config: SceneConfig, room: int) -> list[Draft]:
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


def _ask_count_now(rng, history: History, config: SceneConfig, room: int) -> list[Draft]:
    target = int(rng.integers(config.max_objects + 1))
    frames = [f for f in range(history.frames) if len(history.visible(f)) == target]
    if not frames:
        return []
    frame = frames[int(rng.integers(len(frames)))]
    return [_count(frame, "rt_count", QUESTIONS["rt_count"], target, config.max_objects)]


def _ask_position_now(rng, history: History, config: SceneConfig, room: int) -> list[Draft]:
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


def _ask_character_now(rng, history: History, config: SceneConfig, room: int) -> list[Draft]:
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


def _ask_first(rng, history: History, config: SceneConfig, room: int) -> list[Draft]:
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
    if sum(history.first[i] == history.first[earliest] for i in shown) > 1:  # v3: seen together at frame 0
        return []
    distractors = [history.description(i) for i in shown if i != earliest]
    distractors += _phantoms(rng, history, 3 - len(distractors), [history.appearance[i].colour for i in shown])
    answer = history.description(earliest)
    return [_mc(rng, frame, "bt_first", QUESTIONS["bt_first"], answer, distractors, history.appearance[earliest])]


def _ask_before_change(rng, history: History, config: SceneConfig, room: int, attribute: str) -> list[Draft]:
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


def _ask_colour_before(rng, history: History, config: SceneConfig, room: int) -> list[Draft]:
    return _ask_before_change(rng, history, config, room, "colour")


def _ask_shape_before(rng, history: History, config: SceneConfig, room: int) -> list[Draft]:
    return _ask_before_change(rng, history, config, room, "shape")


def _ask_previous(rng, history: History, config: SceneConfig, room: int) -> list[Draft]:
    """Asked when the object and the one before it appeared in different colours, and the one
    before it is the only object that appeared at its frame and before the object's (in v3,
    objects already there at frame 0 appear together); the options and the object asked about
    all have different colours."""
    first = history.first
    candidates = [
        (f, i)
        for f in range(history.frames)
        for before, previous, i in zip([None, *history.appeared(f)], history.appeared(f), history.appeared(f)[1:])
        if history.appearance[previous].colour != history.appearance[i].colour
        and first[previous] < first[i] and (before is None or first[before] < first[previous])
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


def _ask_left(rng, history: History, config: SceneConfig, room: int) -> list[Draft]:
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


def _ask_appeared(rng, history: History, config: SceneConfig, room: int) -> list[Draft]:
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


def _ask_count_so_far(rng, history: History, config: SceneConfig, room: int) -> list[Draft]:
    subjects = list(COUNT_QUESTIONS)
    subject = subjects[int(rng.integers(len(subjects)))]
    question, largest = COUNT_QUESTIONS[subject]
    target = int(rng.integers(largest + 1))
    frames = [f for f in range(history.frames) if _count_so_far(history, subject, f) == target]
    if not frames:
        return []
    frame = frames[int(rng.integers(len(frames)))]
    return [_count(frame, "fp_count", question, target, largest)]


def _count_so_far(history: History, subject: str, frame: int) -> int:
    if subject == "colour changes":
        return sum(1 for c, before, after in history.changes if c <= frame and before.colour != after.colour)
    appeared = [history.appearance[i] for i in history.appeared(frame)]
    if subject == "shapes":
        return sum(1 for obj in appeared if obj.shape != GLYPH)
    if subject == "characters":
        return sum(1 for obj in appeared if obj.shape == GLYPH)
    return len(appeared)


# task -> (question writer, relative frequency of attempts); fp_appeared yields 2 or 4 queries.
TASKS: dict[str, tuple[Callable[..., list[Draft]], float]] = {
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
REAL_TIME_TASKS = tuple(task for task in TASKS if task.startswith("rt_"))


def _tasks(config: SceneConfig) -> dict[str, tuple[Callable[..., list[Draft]], float]]:
    """The question writers of the config's generator version (v3: `questions_v3`)."""
    if config.version < 3:
        return TASKS
    from stc.eval.synthetic.questions_v3 import V3_TASKS  # here: questions_v3 imports this module's writers

    return {**TASKS, **V3_TASKS}


def ask_questions(rng, history: History, config: SceneConfig) -> list[Draft]:
    """Draw tasks at random until the episode has its number of distinct questions, at least one
    of them in the last third of the video; in time order. A backward-tracing question is not
    repeated with the same answer at another time."""
    wanted = int(rng.integers(config.queries[0], config.queries[1] + 1))
    late = config.frames * 2 // 3
    tasks = _tasks(config)
    names = list(tasks)
    weights = np.array([tasks[name][1] for name in names])
    weights /= weights.sum()
    drafts: list[Draft] = []
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
