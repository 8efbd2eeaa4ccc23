"""Confidence intervals and paired tests for benchmark accuracy, resampling whole clusters.

Questions are not independent: the ~10 questions of one synthetic episode (or of one OVO-Bench /
StreamingBench video) share a scene, and a model that misreads it tends to miss several of them.
Treating the 1,043 questions of the testbed as independent coin flips would understate the
uncertainty. Every procedure here therefore resamples or relabels *clusters* (episodes, videos):
the unit that was drawn at random when the benchmark was made.

Confidence intervals (`bootstrap_intervals`): the percentile cluster bootstrap (Efron &
Tibshirani 1993, ch. 13; Field & Welsh 2007, "Bootstrapping clustered data"). Draw C clusters
with replacement from the C observed ones, recompute the statistic exactly as the report
computes it (micro: correct / total over all questions of the category; macro: the mean of the
task accuracies, as OVO-Bench averages), repeat `resamples` times, and report the 2.5th and
97.5th percentiles. The statistic is a ratio of sums, so clusters of unequal size are handled
as they should be (a resampled episode brings all of its questions).

Accuracy retained (`paired_comparison`): the same resampled clusters are applied to both runs at
once (the runs answered the same questions), and the interval is the percentile interval of
100 * overall(B) / overall(A) over the resamples. Resampling jointly keeps the correlation
between the two runs, which makes the interval much narrower than two independent intervals
would suggest. The difference B - A in points gets its interval the same way.

Paired test (`paired_comparison`, `p_value`): a cluster-level sign-flip (randomisation) test,
the clustered analogue of McNemar's test. Under the null hypothesis that the two runs are
exchangeable (neither is better: within every cluster, which run produced which outcomes is a
coin toss), swapping the two runs' outcomes of any set of clusters leaves the distribution of the
data unchanged. The statistic is the observed difference in overall accuracy (B - A, computed as
the report computes it); the p-value is the share of swaps whose |difference| is at least the
observed one (two-sided). With few clusters that differ (k <= 16: 2^k <= 65,536) every swap is
enumerated and the p-value is exact; otherwise `resamples` random swaps are drawn and
p = (1 + hits) / (1 + resamples), which is never 0 and keeps the test valid (Phipson & Smyth
2010). Identical runs give p = 1. A permutation test is preferred to a bootstrap p-value because
it needs no centring assumption and is exact under its null at any number of clusters; the
bootstrap interval of the difference is reported beside it as the estimate of the effect's size.
The two come from different procedures and can disagree near the 5% boundary.

Limits: a percentile bootstrap under-covers with few clusters (say under 20; its intervals are
too narrow) and cannot be wider than the observed spread (0% or 100% accuracy gets [0, 0] or
[100, 100]). Everything is seeded (`SEED`), so the same inputs always print the same intervals.
NumPy only; 2,000 resamples of 100 clusters take a few milliseconds.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
EXACT_LIMIT = 2**16  # enumerate every sign flip when there are at most this many


class Question(NamedTuple):
    """One scored question: its id, task, whether it was answered right, and its cluster (the
    episode or video it belongs to: questions of one cluster are resampled together)."""

    qid: str
    task: str
    correct: bool
    cluster: object

    def to_json(self) -> dict:
        return {"qid": self.qid, "task": self.task, "correct": bool(self.correct), "cluster": self.cluster}

    @classmethod
    def from_json(cls, data: Mapping) -> Question:
        cluster = data["cluster"]
        if isinstance(cluster, (list, dict)):  # unhashable in hand-written JSON: compared as text
            cluster = str(cluster)
        return cls(str(data["qid"]), str(data["task"]), bool(data["correct"]), cluster)


@dataclass
class Table:
    """Correct and total counts per cluster and task: `correct[c, t]`, `total[c, t]`."""

    clusters: list
    tasks: list[str]
    correct: np.ndarray
    total: np.ndarray


def tabulate(questions: Iterable[Question], tasks: Sequence[str] | None = None) -> Table:
    """Per-cluster, per-task counts; clusters in a fixed order (sorted by their text), so the
    result does not depend on the order the questions come in."""
    questions = list(questions)
    tasks = list(tasks) if tasks is not None else sorted({q.task for q in questions})
    clusters = sorted({q.cluster for q in questions}, key=lambda c: (str(type(c)), str(c)))
    c_index = {c: i for i, c in enumerate(clusters)}
    t_index = {t: i for i, t in enumerate(tasks)}
    correct = np.zeros((len(clusters), len(tasks)))
    total = np.zeros((len(clusters), len(tasks)))
    rows = np.array([c_index[q.cluster] for q in questions], dtype=int)
    cols = np.array([t_index[q.task] for q in questions], dtype=int)
    np.add.at(total, (rows, cols), 1.0)
    np.add.at(correct, (rows, cols), np.array([bool(q.correct) for q in questions], dtype=float))
    return Table(clusters, tasks, correct, total)


def scores(correct: np.ndarray, total: np.ndarray, tasks: Sequence[str], groups: Mapping[str, Sequence[str]],
           average: str) -> dict:
    """Task, category and overall accuracy (percent) of counts summed over clusters.

    correct/total: [..., T] (any leading batch shape). Returns {"tasks": [..., T], "categories":
    {name: [...]}, "overall": [...]}; NaN where a task or category has no question (a resample
    that drew none of its clusters), and such tasks/categories are left out of macro means, as
    `accuracy_report` leaves out tasks without outcomes.
    """
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN slice
        task_scores = 100.0 * correct / total
        index = {t: i for i, t in enumerate(tasks)}
        categories = {}
        for name, members in groups.items():
            cols = [index[t] for t in members if t in index]
            if not cols:
                continue
            if average == "macro":
                categories[name] = np.nanmean(task_scores[..., cols], axis=-1)
            else:
                categories[name] = 100.0 * correct[..., cols].sum(-1) / total[..., cols].sum(-1)
        if average == "macro":
            overall = np.nanmean(np.stack(list(categories.values()), axis=-1), axis=-1) if categories \
                else np.nanmean(task_scores, axis=-1)
        else:
            overall = 100.0 * correct.sum(-1) / total.sum(-1)
    return {"tasks": task_scores, "categories": categories, "overall": overall}


def resample_weights(clusters: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, clusters] how many times each cluster is drawn in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(clusters, np.full(clusters, 1.0 / clusters), size=resamples).astype(float)


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """[low, high] percentiles of `samples` (NaN resamples ignored); None when all are NaN."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return None
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return [float(low), float(high)]


@dataclass
class Intervals:
    """95% bootstrap intervals of one report's accuracies (percent)."""

    overall: list[float] | None
    categories: dict[str, list[float] | None]
    tasks: dict[str, list[float] | None]
    clusters: int
    questions: int
    resamples: int = RESAMPLES
    seed: int = SEED
    level: float = LEVEL

    def to_json(self) -> dict:
        return {
            "overall": self.overall, "categories": dict(self.categories), "tasks": dict(self.tasks),
            "level": self.level, "method": "percentile cluster bootstrap", "clusters": self.clusters,
            "questions": self.questions, "resamples": self.resamples, "seed": self.seed,
        }


def bootstrap_intervals(questions: Sequence[Question], groups: Mapping[str, Sequence[str]], average: str,
                        resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> Intervals:
    """Percentile cluster-bootstrap intervals of task, category and overall accuracy."""
    table = tabulate(questions, _task_order(questions, groups))
    weights = resample_weights(len(table.clusters), resamples, seed)
    boot = scores(weights @ table.correct, weights @ table.total, table.tasks, groups, average)
    return Intervals(
        overall=percentile_interval(boot["overall"], level),
        categories={name: percentile_interval(values, level) for name, values in boot["categories"].items()},
        tasks={task: percentile_interval(boot["tasks"][:, i], level) for i, task in enumerate(table.tasks)},
        clusters=len(table.clusters), questions=len(questions), resamples=resamples, seed=seed, level=level,
    )


@dataclass
class Paired:
    """Run B against run A on the questions both answered, paired by question id."""

    questions: int
    clusters: int
    a: float  # overall accuracy of A on the common questions (percent)
    b: float
    difference: float  # b - a, in points
    ci: list[float] | None  # bootstrap interval of the difference
    p_value: float  # two-sided sign-flip permutation test
    retained: float | None  # 100 * b / a
    retained_ci: list[float] | None
    exact: bool  # every sign flip enumerated
    flips: int  # sign flips evaluated
    only_a: int = 0  # questions answered by one run only (left out of the paired statistics)
    only_b: int = 0
    resamples: int = RESAMPLES
    seed: int = SEED
    level: float = LEVEL

    def to_json(self) -> dict:
        return {
            "difference": self.difference, "ci": self.ci, "p_value": self.p_value,
            "retained": self.retained, "retained_ci": self.retained_ci, "a": self.a, "b": self.b,
            "questions": self.questions, "clusters": self.clusters, "only_a": self.only_a, "only_b": self.only_b,
            "test": "cluster sign-flip permutation test (two-sided)" + (", exact" if self.exact else ""),
            "flips": self.flips, "interval": "percentile cluster bootstrap, paired", "level": self.level,
            "resamples": self.resamples, "seed": self.seed,
        }


def paired_comparison(questions_a: Sequence[Question], questions_b: Sequence[Question],
                      groups: Mapping[str, Sequence[str]], average: str, resamples: int = RESAMPLES,
                      seed: int = SEED, level: float = LEVEL) -> Paired:
    """B against A on their common questions (matched by qid): the difference in overall
    accuracy with its paired bootstrap interval and sign-flip p-value, and accuracy retained
    (100 * B / A) with its paired bootstrap interval. Raises ValueError when no question is
    common or a common question has another task or cluster in B than in A."""
    by_qid_a = {q.qid: q for q in questions_a}
    by_qid_b = {q.qid: q for q in questions_b}
    common = [qid for qid in by_qid_a if qid in by_qid_b]
    if not common:
        raise ValueError("the two runs have no question in common")
    mismatched = [qid for qid in common if (by_qid_a[qid].task, by_qid_a[qid].cluster)
                  != (by_qid_b[qid].task, by_qid_b[qid].cluster)]
    if mismatched:
        raise ValueError(f"{len(mismatched)} questions have another task or cluster in one run "
                         f"(e.g. {mismatched[0]!r}); these are not the same questions")
    a_questions = [by_qid_a[qid] for qid in common]
    tasks = _task_order(a_questions, groups)
    table_a = tabulate(a_questions, tasks)
    table_b = tabulate([by_qid_b[qid] for qid in common], tasks)
    total = table_a.total  # the same questions: the same totals
    a_point = float(scores(table_a.correct.sum(0), total.sum(0), tasks, groups, average)["overall"])
    b_point = float(scores(table_b.correct.sum(0), total.sum(0), tasks, groups, average)["overall"])

    weights = resample_weights(len(table_a.clusters), resamples, seed)
    boot_total = weights @ total
    boot_a = scores(weights @ table_a.correct, boot_total, tasks, groups, average)["overall"]
    boot_b = scores(weights @ table_b.correct, boot_total, tasks, groups, average)["overall"]
    with np.errstate(invalid="ignore", divide="ignore"):
        boot_retained = np.where(boot_a > 0, 100.0 * boot_b / boot_a, np.nan)

    p, exact, flips = p_value(table_a.correct, table_b.correct, total, tasks, groups, average, resamples, seed)
    return Paired(
        questions=len(common), clusters=len(table_a.clusters), a=a_point, b=b_point, difference=b_point - a_point,
        ci=percentile_interval(boot_b - boot_a, level), p_value=p,
        retained=100.0 * b_point / a_point if a_point else None,
        retained_ci=percentile_interval(boot_retained, level) if a_point else None,
        exact=exact, flips=flips, only_a=len(by_qid_a) - len(common), only_b=len(by_qid_b) - len(common),
        resamples=resamples, seed=seed, level=level,
    )


def p_value(correct_a: np.ndarray, correct_b: np.ndarray, total: np.ndarray, tasks: Sequence[str],
            groups: Mapping[str, Sequence[str]], average: str, resamples: int = RESAMPLES,
            seed: int = SEED) -> tuple[float, bool, int]:
    """Two-sided cluster sign-flip test of overall(B) - overall(A) = 0 from [C, T] counts.

    Returns (p, exact, flips): exact when all 2^k swaps of the k clusters whose counts differ
    were enumerated (k small), else `resamples` random swaps with p = (1 + hits) / (1 + resamples).
    """
    differ = np.flatnonzero(np.any(correct_a != correct_b, axis=1))
    if not len(differ):
        return 1.0, True, 1
    delta = (correct_b - correct_a)[differ]  # [k, T]: what swapping a cluster moves from B to A
    sum_a, sum_b, sum_total = correct_a.sum(0), correct_b.sum(0), total.sum(0)

    def statistic(swapped: np.ndarray) -> np.ndarray:  # swapped: [S, k] of 0/1
        moved = swapped @ delta
        a = scores(sum_a + moved, sum_total, tasks, groups, average)["overall"]
        b = scores(sum_b - moved, sum_total, tasks, groups, average)["overall"]
        return b - a

    observed = abs(float(statistic(np.zeros((1, len(differ))))[0]))
    tolerance = 1e-9 * max(1.0, observed)
    k = len(differ)
    if 2**k <= EXACT_LIMIT:
        swaps = ((np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1).astype(float)
        hits = int(np.sum(np.abs(statistic(swaps)) >= observed - tolerance))
        return hits / 2**k, True, 2**k
    rng = np.random.default_rng(seed + 1)  # not the bootstrap's stream
    swaps = rng.integers(0, 2, size=(resamples, k)).astype(float)
    hits = int(np.sum(np.abs(statistic(swaps)) >= observed - tolerance))
    return (1 + hits) / (1 + resamples), False, resamples


def format_interval(interval: Sequence[float] | None, digits: int = 1, suffix: str = "") -> str:
    """"[74.1, 79.2]" (or "[-]" when undefined)."""
    if interval is None:
        return "[-]"
    low, high = interval
    return f"[{low:.{digits}f}{suffix}, {high:.{digits}f}{suffix}]"


def format_p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _task_order(questions: Sequence[Question], groups: Mapping[str, Sequence[str]]) -> list[str]:
    """Tasks of the groups in order, then any other task of the questions."""
    present = {q.task for q in questions}
    ordered = [t for members in groups.values() for t in members if t in present]
    return list(dict.fromkeys(ordered + sorted(present - set(ordered))))
