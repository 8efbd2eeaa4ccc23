"""The time-only guesser: the floor a question set must hold, answering from the task and the
question's frame alone (no frame, no prompt wording).

It learns how often each answer is right per (task, question frame) on training-split episodes
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
from stc.eval.synthetic.episodes import build_benchmark, chance_accuracy
from stc.eval.synthetic.scene import SceneConfig


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


def time_only_report(train_episodes: int, seed: int, n: int, scene: SceneConfig | None = None) -> tuple[Report, dict]:
    """(report, chance per category and overall) of the guesser learnt on the first
    `train_episodes` training episodes, on held-out episodes [seed, seed + n)."""
    from stc.eval.synthetic.benchmark import score_synthetic

    guesser = TimeOnlyGuesser(build_benchmark("train", train_episodes, 0, scene))
    queries = build_benchmark("eval", n, seed, scene)
    answers = {q.qid: {"response": guesser.guess(q)} for q in queries}
    report = score_synthetic(queries, answers, source=f"time-only guesser, {train_episodes} training episodes")
    return report, {key: 100.0 * value for key, value in chance_accuracy(queries).items()}
