"""Question writers of the v3 generator (`SceneConfig(version=3)`, issue 33, in progress): the
question's time is drawn first, then its answer, so that the time gives the answer away less.

In v1/v2 a yes/no task drew the answer first and then a frame where it holds: "has X appeared
yet?" is No in most early frames and Yes in most late ones, and a guesser that knows only the
task and the frame scores 86% on it (`stc.eval.synthetic.priors`). Here a task first draws its
frame among those where every answer can be asked, then each answer with probability 1/2, then an
object that makes it true. Only the yes/no tasks are rewritten so far (fp_appeared, bt_left); the
count tasks (rt_count, fp_count, whose answer is a fact of the scene at that time) still lean on
time and stay as in v2, as do the multiple-choice tasks (their correct letter is uniform already).
"""

from __future__ import annotations

from stc.eval.synthetic.history import History
from stc.eval.synthetic.questions import QUESTIONS, _yesno


def ask_appeared(rng, history: History, config, room: int):
    """fp_appeared at one frame where some object has appeared and some other appears later:
    Yes or No with probability 1/2 each, about such an object. One question per call, so the
    forward probes do not come in before/after pairs whose order gives them away."""
    frames = [f for f in range(history.frames)
              if any(history.first[i] <= f for i in history.order) and any(history.first[i] > f for i in history.order)]
    if not frames:
        return []
    frame = frames[int(rng.integers(len(frames)))]
    yes = bool(rng.random() < 0.5)
    ids = [i for i in history.order if (history.first[i] <= frame) == yes]
    object_id = ids[int(rng.integers(len(ids)))]
    question = QUESTIONS["fp_appeared"].format(description=history.description(object_id))
    return [_yesno(frame, "fp_appeared", question, yes, history.appearance[object_id])]


def ask_left(rng, history: History, config, room: int):
    """bt_left at one frame where some object has already left and some other has not (on screen
    or still to come): Yes or No with probability 1/2 each, about such an object."""
    frames = [f for f in range(history.frames)
              if any(history.last[i] < f for i in history.order) and any(history.last[i] >= f for i in history.order)]
    if not frames:
        return []
    frame = frames[int(rng.integers(len(frames)))]
    yes = bool(rng.random() < 0.5)
    ids = [i for i in history.order if (history.last[i] < frame) == yes]
    object_id = ids[int(rng.integers(len(ids)))]
    question = QUESTIONS["bt_left"].format(description=history.description(object_id))
    return [_yesno(frame, "bt_left", question, yes, history.appearance[object_id])]


# task -> (writer, relative frequency of attempts) replacing v2's; fp_appeared asks one question
# where v2 asked 2 or 4, so it is attempted three times as often to keep its share
V3_TASKS = {"fp_appeared": (ask_appeared, 1.8), "bt_left": (ask_left, 1.0)}
