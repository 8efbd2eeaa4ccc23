"""Guessers that see no video: the floors a question set must hold. The time-only guesser answers
from the task and the question's frame alone (no frame, no prompt wording); the value guesser
(`ValueGuesser`) from the task and the options' values alone.

The time-only guesser learns how often each answer is right per (task, question frame) on training-split episodes
and answers every held-out question with the most frequent one (the task's most frequent answer
at a frame it never saw; the first choice for a task it never saw). Scored by the benchmark's own
rule (`stc.eval.synthetic.benchmark.score_synthetic`: the answer letter, Yes/No or number). On a
question set without priors it scores chance (`chance_accuracy`); on the shipped generator it
does not: "has X appeared yet?" is mostly No early and Yes late (docs/testbed.md has the figures).
"""

from __future__ import annotations

from collections import Counter

from stc.eval.records import Query
from stc.eval.reporting import Report
from stc.eval.synthetic.benchmark import score_synthetic
from stc.eval.synthetic.episodes import build_benchmark, chance_accuracy
from stc.eval.synthetic.scene import COLOURS, SceneConfig


class TimeOnlyGuesser:
    """Answer frequencies per (task, frame) and per task, from training questions."""

    def __init__(self, queries):
        self.by_time: dict[tuple[str, int], Counter] = {}
        self.by_task: dict[str, Counter] = {}
        for query in queries:
            self.by_time.setdefault((query.task, query.extra["frame"]), Counter())[query.answer] += 1
            self.by_task.setdefault(query.task, Counter())[query.answer] += 1

    def guess(self, query: Query) -> str:
        """The most frequent answer of the question's (task, frame), ties to the earliest choice."""
        counts = self.by_time.get((query.task, query.extra["frame"])) or self.by_task.get(query.task)
        choices = list(query.extra["choices"])
        if not counts:
            return choices[0]
        return max(choices, key=lambda answer: (counts[answer], -choices.index(answer)))


class ValueGuesser:
    """The task-only floor of the options: for multiple choice, how often each option value (and,
    for an object's description such as "red letter K", its colour and its noun) was the right
    one when offered, per task; the option that scores highest wins. Yes/no and counts: the
    task's most frequent answer. A question set whose right answers favour a value ("red" more
    often right than the other colours) lets it beat chance; it knows nothing of the time."""

    def __init__(self, queries):
        self.offered: dict[str, Counter] = {}
        self.right: dict[str, Counter] = {}
        self.answers: dict[str, Counter] = {}
        for query in queries:
            self.answers.setdefault(query.task, Counter())[query.answer] += 1
            if query.kind == "mc":
                for option in query.extra["options"]:
                    self.offered.setdefault(query.task, Counter()).update(_features(option))
                self.right.setdefault(query.task, Counter()).update(_features(query.extra["answer_text"]))

    def guess(self, query: Query) -> str:
        choices = list(query.extra["choices"])
        if query.kind != "mc":
            counts = self.answers.get(query.task, Counter())
            return max(choices, key=lambda answer: (counts[answer], -choices.index(answer)))
        offered, right = self.offered.get(query.task, Counter()), self.right.get(query.task, Counter())

        def score(option: str) -> float:
            rates = [right[f] / offered[f] for f in _features(option) if offered[f]]
            return sum(rates) / len(rates) if rates else 0.0

        options = query.extra["options"]
        best = max(range(len(options)), key=lambda k: (score(options[k]), -k))
        return choices[best]


def _features(option: str) -> list[str]:
    """The option value, and for a description ("red letter K") its colour and noun too."""
    colour, _, noun = option.partition(" ")
    return [option, f"colour={colour}", f"noun={noun}"] if colour in COLOURS and noun else [option]


def time_only_report(train_episodes: int, seed: int, n: int, scene: SceneConfig | None = None) -> tuple[Report, dict]:
    """(report, chance per category and overall) of the guesser learnt on the first
    `train_episodes` training episodes, on held-out episodes [seed, seed + n)."""
    return floor_report(TimeOnlyGuesser, train_episodes, seed, n, scene)


def floor_report(guesser, train_episodes: int, seed: int, n: int, scene: SceneConfig | None = None) -> tuple[Report, dict]:
    """(report, chance per category and overall) of a guesser class (`TimeOnlyGuesser`,
    `ValueGuesser`) learnt on the first `train_episodes` training episodes, scored on held-out
    episodes [seed, seed + n)."""
    learnt = guesser(build_benchmark("train", train_episodes, 0, scene))
    queries = build_benchmark("eval", n, seed, scene)
    answers = {q.qid: {"response": learnt.guess(q)} for q in queries}
    report = score_synthetic(queries, answers, source=f"{guesser.__name__}, {train_episodes} training episodes")
    return report, {key: 100.0 * value for key, value in chance_accuracy(queries).items()}
