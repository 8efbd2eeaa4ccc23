"""Question writers of the v3 generator (`SceneConfig(version=3)`, issue 33): questions whose
time does not give their answer away.

In v1/v2 a yes/no task drew the answer first and then a frame where it holds: "has X appeared
yet?" is No in most early frames and Yes in most late ones, and a guesser that knows only the
task and the frame scores 86% on it (`stc.eval.synthetic.priors`). Here:
- yes/no (fp_appeared, bt_left): the frame is drawn among those where both answers can be asked,
  then Yes or No with probability 1/2 each, then an object that makes it true.
- counts (rt_count; fp_count, now over a recent window instead of "so far", which only grows):
  the v3 scene is the same at every time (`scene._script_timeline`), so a count's distribution
  does not depend on the frame; each answer is drawn with the same probability (asked only in
  episodes where every answer occurs), then a frame where it holds.
The multiple-choice tasks stay as in v2 (their correct letter is uniform already).
"""

from __future__ import annotations

from stc.eval.synthetic.history import History
from stc.eval.synthetic.questions import QUESTIONS, V3_QUESTIONS, _count, _yesno


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


def ask_count_now(rng, history: History, config, room: int):
    """rt_count: how many objects are visible at one frame, each answer 0..max_objects equally
    often (frames with the drawn count, in an episode that shows every count)."""
    counts = {f: len(history.visible(f)) for f in range(history.frames)}
    if not (picked := balanced_count(rng, counts, config.max_objects)):
        return []
    frame, value = picked
    return [_count(frame, "rt_count", QUESTIONS["rt_count"], value, config.max_objects)]


def ask_count_recent(rng, history: History, config, room: int):
    """fp_count: how many objects appeared in the last RECENT_SECONDS, asked where that window
    lies inside the video (objects already there at frame 0 are never counted), each answer
    0..RECENT_LARGEST equally often."""
    counts = {f: len(recent_arrivals(history, f, config.fps)) for f in range(history.frames)
              if f >= RECENT_SECONDS * config.fps}
    if not (picked := balanced_count(rng, counts, RECENT_LARGEST)):
        return []
    frame, value = picked
    question = V3_QUESTIONS["fp_count"].format(seconds=RECENT_SECONDS)
    return [_count(frame, "fp_count", question, value, RECENT_LARGEST)]


def recent_arrivals(history: History, frame: int, fps: float) -> list[int]:
    """Ids of the objects first seen in the RECENT_SECONDS up to `frame` (times in (t - w, t])."""
    return [i for i in history.order if 0 <= frame - history.first[i] < RECENT_SECONDS * fps]


def balanced_count(rng, counts: dict[int, int], largest: int):
    """(frame, count) with the count uniform over 0..largest and the frame uniform among those
    with that count; None unless every count occurs (so the answer is not skewed towards the
    counts more episodes show)."""
    if not set(range(largest + 1)) <= set(counts.values()):
        return None
    value = int(rng.integers(largest + 1))
    frames = [f for f, count in counts.items() if count == value]
    return frames[int(rng.integers(len(frames)))], value


RECENT_SECONDS = 8  # fp_count's window
RECENT_LARGEST = 3  # fp_count's largest answer (4 arrivals in 8 seconds: 2% of windows)

# task -> (writer, relative frequency of attempts) replacing v2's; fp_appeared asks one question
# where v2 asked 2 or 4, so it is attempted three times as often to keep its share; the counts
# are asked only in episodes that show every answer, so they are attempted more often
V3_TASKS = {"fp_appeared": (ask_appeared, 1.8), "bt_left": (ask_left, 1.0), "rt_count": (ask_count_now, 2.5),
            "fp_count": (ask_count_recent, 1.6)}
