"""Score reports shared by the benchmark scorers.

A `Report` holds per-task accuracy, category averages and an overall score (all in percent),
the correct/total counts behind them, and prints as a text table or a JSON object. Beside it,
and re-exported here: `Comparison` (`stc.eval.comparison`: two reports side by side, e.g. dense
baseline vs STC, with per-task deltas and the share of accuracy the second one retains) and the
scorers' file readers (`stc.eval.answer_files`).

Scorers turn every scored question into an outcome `(task, correct)`, or `(task, correct, qid,
cluster)` when they know the question's id and the episode or video it belongs to;
`accuracy_report` does the averaging, macro (OVO-Bench: category = mean of its tasks, overall =
mean of categories) or micro (StreamingBench: category and overall = share of all their
questions answered right). A report built from per-question outcomes keeps them
(`Report.outcomes`, "outcomes" in its JSON) and shows 95% confidence intervals (cluster
bootstrap); a comparison of two such reports adds a paired test (see `statistics`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from stc.eval.answer_files import EvalDataError, read_answer_file, read_json, response_text  # noqa: F401  (re-exported)
from stc.eval.comparison import Comparison, above_floor, compare_reports, retained  # noqa: F401  (re-exported)
from stc.eval.score_format import FEW_CLUSTERS, display_groups, few_clusters_note, percent, plural
from stc.eval.statistics import Intervals, Question, bootstrap_intervals, format_interval

AVERAGES = ("macro", "micro")


@dataclass
class Report:
    """Accuracies in percent. `groups` maps each category to its tasks in display order,
    `titles` gives categories a long name, `counts` maps a task to its correct/total numbers,
    `model` names whose results they are (when known), `scoring` is "official" or the name of a
    non-official rule (shown in the heading). `outcomes` holds the per-question outcomes when the
    scorer knew them (then the report shows 95% confidence intervals, bootstrapping its
    `cluster_unit`s: episodes, videos), `average` is "macro" or "micro" (how they were averaged)."""

    benchmark: str
    tasks: dict[str, float]
    categories: dict[str, float]
    overall: float
    groups: dict[str, list[str]] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    source: str = ""
    notes: list[str] = field(default_factory=list)
    model: str = ""
    scoring: str = "official"
    outcomes: list[Question] = field(default_factory=list)
    average: str = ""
    cluster_unit: str = "video"
    _intervals: Intervals | None = field(default=None, init=False, repr=False, compare=False)

    def intervals(self) -> Intervals | None:
        """95% cluster-bootstrap intervals of every accuracy; None without per-question outcomes."""
        if not self.outcomes or self.average not in AVERAGES:
            return None
        if self._intervals is None:
            self._intervals = bootstrap_intervals(self.outcomes, self.groups, self.average)
        return self._intervals

    def summary_line(self) -> str:
        """The leaderboard row: each category, then the overall score (with its 95% interval)."""
        parts = [f"{name} {value:.2f}" for name, value in self.categories.items()]
        intervals = self.intervals()
        overall = f"Overall {self.overall:.2f}" + (f" {format_interval(intervals.overall)}" if intervals else "")
        return " | ".join(parts + [overall])

    def to_text(self) -> str:
        """Per-task, per-category and overall accuracy as an aligned table."""
        heading = [self.benchmark if self.scoring == "official"
                   else f"{self.benchmark} ({self.scoring} scoring, not the official rule)"]
        if self.model:
            heading.append(f"model {self.model}")
        if self.source:
            heading.append(self.source)
        intervals = self.intervals()

        def ci(interval) -> str:  # an interval column only when there are intervals
            return f"  {format_interval(interval):>14s}" if intervals else ""

        ci_heading = f"  {'95% CI':>14s}" if intervals else ""
        lines = [" - ".join(heading), f"{'':40s} {'Acc (%)':>8s}{ci_heading}  Correct / Total"]
        for category, tasks in display_groups(self):
            if category is not None:
                title = self.titles.get(category, "")
                label = f"{category} ({title})" if title else category
                value = self.categories.get(category)
                lines.append(f"{label:40s} {percent(value):>8s}"
                             + (ci(intervals.categories.get(category)).rstrip() if intervals else ""))
            for task in tasks:
                count = self.counts.get(task)
                fraction = f"{count['correct']:>7d} / {count['total']}" if count else ""
                lines.append(f"  {task:38s} {percent(self.tasks[task]):>8s}"
                             f"{ci(intervals.tasks.get(task)) if intervals else ''}  {fraction}")
        lines.append(f"{'Overall':40s} {self.overall:>8.2f}{ci(intervals.overall) if intervals else ''}")
        if intervals:
            lines.append(f"95% CI: percentile bootstrap over {plural(intervals.clusters, self.cluster_unit)} "
                         f"({intervals.questions} questions; {intervals.resamples} resamples, seed {intervals.seed})")
            if intervals.clusters < FEW_CLUSTERS:
                lines.append(f"note: {few_clusters_note(self.cluster_unit)}")
        lines.extend(f"note: {note}" for note in self.notes)
        lines.append(self.summary_line())
        return "\n".join(lines)

    def to_json(self) -> dict:
        """{"tasks": {task: percent}, "categories": {category: percent}, "overall": percent},
        plus the benchmark name, task groups, counts, source, notes, model and scoring rule; with
        per-question outcomes also "ci" (95% intervals: {"overall": [low, high], "categories":
        {...}, "tasks": {...}, ...}) and "outcomes" ([{qid, task, correct, cluster}], so that a
        later `stc eval compare` can pair two runs question by question)."""
        data = {
            "tasks": dict(self.tasks),
            "categories": dict(self.categories),
            "overall": self.overall,
            "benchmark": self.benchmark,
            "groups": {name: list(tasks) for name, tasks in self.groups.items()},
            "titles": dict(self.titles),
            "counts": {task: dict(count) for task, count in self.counts.items()},
            "source": self.source,
            "notes": list(self.notes),
            "model": self.model,
            "scoring": self.scoring,
            "average": self.average,
        }
        intervals = self.intervals()
        if intervals is not None:
            data["ci"] = intervals.to_json()
        if self.outcomes:
            data["cluster_unit"] = self.cluster_unit
            data["outcomes"] = [q.to_json() for q in self.outcomes]
        return data

    @classmethod
    def from_json(cls, data: object, source: str = "") -> Report:
        """A report from `to_json` output, or any JSON with at least tasks/categories/overall."""
        if not isinstance(data, Mapping) or not {"tasks", "categories", "overall"} <= set(data):
            raise EvalDataError(f"{source or 'report'}: not a score report (needs tasks, categories, overall)")
        try:
            return cls(
                benchmark=str(data.get("benchmark", "")),
                tasks={str(k): float(v) for k, v in data["tasks"].items()},
                categories={str(k): float(v) for k, v in data["categories"].items()},
                overall=float(data["overall"]),
                groups={str(k): [str(t) for t in v] for k, v in data.get("groups", {}).items()},
                titles={str(k): str(v) for k, v in data.get("titles", {}).items()},
                counts={str(k): {"correct": int(v["correct"]), "total": int(v["total"])}
                        for k, v in data.get("counts", {}).items()},
                source=source or str(data.get("source", "")),
                notes=[str(note) for note in data.get("notes", [])],
                model=str(data.get("model", "")),
                scoring=str(data.get("scoring", "official")),
                outcomes=[Question.from_json(q) for q in data.get("outcomes") or []],
                average=str(data.get("average", "")),
                cluster_unit=str(data.get("cluster_unit", "video")),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise EvalDataError(f"{source or 'report'}: malformed score report ({exc!r})") from None


def accuracy_report(
    benchmark: str,
    outcomes: Iterable[tuple[str, bool] | tuple[str, bool, str, object]],
    groups: Mapping[str, Sequence[str]],
    *,
    average: str,
    titles: Mapping[str, str] | None = None,
    source: str = "",
    notes: Sequence[str] = (),
    model: str = "",
    scoring: str = "official",
    cluster_unit: str = "video",
) -> Report:
    """A Report from (task, correct) outcomes. Tasks and categories with no outcome are left out.

    average="macro": category = unweighted mean of its tasks, overall = mean of the categories.
    average="micro": category and overall = correct / total over all their questions.

    Outcomes (task, correct, qid, cluster) are kept in the report (`Report.outcomes`), which then
    carries confidence intervals that resample whole clusters (`cluster_unit`s: the episodes or
    videos the questions belong to). Either every outcome has a qid or none has.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    counts: dict[str, dict[str, int]] = {}
    questions: list[Question] = []
    for outcome in outcomes:
        task, correct = outcome[0], outcome[1]
        if len(outcome) == 4:
            questions.append(Question(str(outcome[2]), task, bool(correct), outcome[3]))
        count = counts.setdefault(task, {"correct": 0, "total": 0})
        count["correct"] += bool(correct)
        count["total"] += 1
    if questions and len(questions) != sum(count["total"] for count in counts.values()):
        raise ValueError("outcomes mix (task, correct) and (task, correct, qid, cluster)")
    if len({q.qid for q in questions}) != len(questions):
        raise EvalDataError(f"{source or benchmark}: a question id is scored twice")
    known = {task for tasks in groups.values() for task in tasks}
    unknown = sorted(set(counts) - known)
    if unknown:
        raise EvalDataError(f"{source or benchmark}: unknown task(s) {', '.join(unknown)}")
    if not counts:
        raise EvalDataError(f"{source or benchmark}: nothing to score")

    present_groups = {
        name: [task for task in tasks if task in counts] for name, tasks in groups.items()
    }
    present_groups = {name: tasks for name, tasks in present_groups.items() if tasks}
    task_scores = {
        task: 100.0 * counts[task]["correct"] / counts[task]["total"]
        for tasks in present_groups.values()
        for task in tasks
    }
    if average == "macro":
        categories = {name: _mean(task_scores[t] for t in tasks) for name, tasks in present_groups.items()}
        overall = _mean(categories.values())
    else:
        categories = {name: _micro(counts, tasks) for name, tasks in present_groups.items()}
        overall = _micro(counts, list(task_scores))
    return Report(
        benchmark=benchmark,
        tasks=task_scores,
        categories=categories,
        overall=overall,
        groups=present_groups,
        titles={name: titles[name] for name in present_groups if titles and name in titles},
        counts={task: counts[task] for task in task_scores},
        source=source,
        notes=list(notes),
        model=model,
        scoring=scoring,
        outcomes=questions,
        average=average,
        cluster_unit=cluster_unit,
    )


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def _micro(counts: Mapping[str, Mapping[str, int]], tasks: Sequence[str]) -> float:
    correct = sum(counts[t]["correct"] for t in tasks)
    total = sum(counts[t]["total"] for t in tasks)
    return 100.0 * correct / total
