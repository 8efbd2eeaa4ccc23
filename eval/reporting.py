"""Score reports shared by the benchmark scorers, and the input helpers they share.

A `Report` holds per-task accuracy, category averages and an overall score (all in percent),
the correct/total counts behind them, and prints as a text table or a JSON object. A
`Comparison` puts two reports side by side (e.g. dense baseline vs STC) with per-task deltas
and the share of accuracy the second one retains.

Scorers turn every scored question into an outcome `(task, correct)`, or `(task, correct, qid,
cluster)` when they know the question's id and the episode or video it belongs to;
`accuracy_report` does the averaging, macro (OVO-Bench: category = mean of its tasks, overall =
mean of categories) or micro (StreamingBench: category and overall = share of all their
questions answered right). A report built from per-question outcomes keeps them
(`Report.outcomes`, "outcomes" in its JSON) and shows 95% confidence intervals (cluster
bootstrap); a comparison of two such reports adds a paired test (see `statistics`).
"""

from __future__ import annotations

from stc.errors import InputError

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stc.eval.records import read_answers
from stc.eval.statistics import (
    Intervals,
    Paired,
    Question,
    bootstrap_intervals,
    format_interval,
    format_p,
    paired_comparison,
)

AVERAGES = ("macro", "micro")
FEW_CLUSTERS = 20  # below this many clusters, bootstrap intervals are flagged as too narrow


class EvalDataError(InputError):
    """A benchmark, results or answers file is missing, unreadable or not in the expected format."""


# ---------------------------------------------------------------------------------------------
# Input helpers


def read_json(path: str | os.PathLike) -> object:
    """The parsed JSON of a file; any failure becomes an EvalDataError naming the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise EvalDataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise EvalDataError(f"{path}: is a directory, expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise EvalDataError(f"{path}: cannot read ({exc.strerror})") from None


def read_answer_file(path: str | os.PathLike) -> dict[str, dict]:
    """qid -> answer record of one answers JSONL file (see records.Answer).

    Unlike `records.read_answers` (made for resuming, where no file means no answers yet), a
    missing file, a file with no answer records or records without a response are errors.
    """
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: no such answers file")
    try:
        answers = read_answers(path)
    except (KeyError, TypeError):
        raise EvalDataError(f"{path}: a line is not an answer record (no 'qid')") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise EvalDataError(f"{path}: cannot read ({exc})") from None
    if not answers:
        raise EvalDataError(f"{path}: no answer records (expected JSON lines with qid and response)")
    if any("response" not in record for record in answers.values()):
        raise EvalDataError(f"{path}: records without 'response'; is this a queries file, not answers?")
    return answers


def response_text(response: object) -> str | None:
    """A model response as text: None stays None; a list (e.g. Qwen2-VL's batch-decoded
    outputs, one string per sequence) becomes its items joined; anything else becomes str."""
    if response is None:
        return None
    if isinstance(response, str):
        return response
    if isinstance(response, (list, tuple)):
        return "".join(str(item) for item in response if item is not None)
    return str(response)


# ---------------------------------------------------------------------------------------------
# Reports


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
        for category, tasks in _display_groups(self):
            if category is not None:
                title = self.titles.get(category, "")
                label = f"{category} ({title})" if title else category
                value = self.categories.get(category)
                lines.append(f"{label:40s} {_percent(value):>8s}"
                             + (ci(intervals.categories.get(category)).rstrip() if intervals else ""))
            for task in tasks:
                count = self.counts.get(task)
                fraction = f"{count['correct']:>7d} / {count['total']}" if count else ""
                lines.append(f"  {task:38s} {_percent(self.tasks[task]):>8s}"
                             f"{ci(intervals.tasks.get(task)) if intervals else ''}  {fraction}")
        lines.append(f"{'Overall':40s} {self.overall:>8.2f}{ci(intervals.overall) if intervals else ''}")
        if intervals:
            lines.append(f"95% CI: percentile bootstrap over {_many(intervals.clusters, self.cluster_unit)} "
                         f"({intervals.questions} questions; {intervals.resamples} resamples, seed {intervals.seed})")
            if intervals.clusters < FEW_CLUSTERS:
                lines.append(f"note: {_few(self.cluster_unit)}")
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


# ---------------------------------------------------------------------------------------------
# Comparisons


@dataclass
class Comparison:
    """Two reports side by side: `other` measured against `baseline`. When both carry
    per-question outcomes, `paired()` tests the difference on the questions both answered. With
    a `floor` (a run that sees no usable video, e.g. the synthetic testbed's shuffled frames),
    also the retention above it, `above_floor`."""

    baseline: Report
    other: Report
    labels: tuple[str, str] = ("baseline", "compressed")
    floor: Report | None = None
    _paired: tuple[Paired | None, str] | None = field(default=None, init=False, repr=False, compare=False)

    def paired(self) -> tuple[Paired | None, str]:
        """(the paired statistics, "") or (None, why they cannot be computed)."""
        if self._paired is None:
            self._paired = self._compute_paired()
        return self._paired

    def _compute_paired(self) -> tuple[Paired | None, str]:
        missing = [label for label, report in zip(self.labels, (self.baseline, self.other)) if not report.outcomes]
        if missing:
            return None, (f"{' and '.join(missing)} {'has' if len(missing) == 1 else 'have'} no per-question "
                          "outcomes (an aggregate score report or official outputs): no confidence interval or "
                          "paired test can be computed; compare answer sets, or score JSONs that hold \"outcomes\"")
        if self.baseline.average != self.other.average:
            return None, (f"the reports average differently ({self.baseline.average} vs {self.other.average}): "
                          "no paired test")
        groups = {name: list(tasks) for name, tasks in self.baseline.groups.items()}
        for name, tasks in self.other.groups.items():
            groups.setdefault(name, [])
            groups[name] += [t for t in tasks if t not in groups[name]]
        try:
            return paired_comparison(self.baseline.outcomes, self.other.outcomes, groups, self.baseline.average), ""
        except ValueError as exc:
            return None, f"no paired test: {exc}"

    def rows(self) -> list[tuple[str, str, float | None, float | None]]:
        """(kind, name, baseline value, other value) rows; kind is category, task or overall."""
        rows: list[tuple[str, str, float | None, float | None]] = []
        for category, tasks in _display_groups(self.baseline, self.other):
            if category is not None:
                rows.append(("category", category, self.baseline.categories.get(category),
                             self.other.categories.get(category)))
            rows.extend(("task", task, self.baseline.tasks.get(task), self.other.tasks.get(task))
                        for task in tasks)
        rows.append(("overall", "Overall", self.baseline.overall, self.other.overall))
        return rows

    def to_text(self) -> str:
        a, b = self.labels
        width = max(10, len(a), len(b))
        paired, _ = self.paired()
        both = (self.baseline.intervals(), self.other.intervals()) if paired is not None else None

        def ci(intervals, kind: str, name: str) -> str:  # a 95% CI column after each value, with outcomes
            if both is None:
                return ""
            interval = (intervals.overall if kind == "overall" else
                        (intervals.tasks if kind == "task" else intervals.categories).get(name))
            return f" {format_interval(interval):>14s}"

        ci_heading = f" {'95% CI':>14s}" if both else ""
        floor_heading = f" {'floor':>8s} {'above floor':>12s}" if self.floor is not None else ""
        lines = [
            f"{b} vs {a}",
            f"{'':32s} {a:>{width}s}{ci_heading} {b:>{width}s}{ci_heading} {'delta':>8s} {'retained':>9s}{floor_heading}",
        ]
        for kind, name, base, other in self.rows():
            label = name if kind != "task" else f"  {name}"
            delta = None if base is None or other is None else other - base
            kept = retained(base, other)
            floor_columns = ""
            if self.floor is not None:
                floor = self._floor_value(kind, name)
                above = above_floor(base, other, floor)
                floor_columns = f" {_percent(floor):>8s} {'-' if above is None else f'{above:.1f}%':>12s}"
            lines.append(
                f"{label:32s} {_percent(base):>{width}s}{ci(both[0], kind, name) if both else ''} "
                f"{_percent(other):>{width}s}{ci(both[1], kind, name) if both else ''} "
                f"{_signed(delta):>8s} {'-' if kept is None else f'{kept:.1f}%':>9s}{floor_columns}"
            )
        if self.floor is not None:
            lines.append(f"above floor: (B - floor) / (A - floor), floor {self.floor.source or 'given'} (no interval)")
        return "\n".join(lines + self._statistics_lines())

    def _floor_value(self, kind: str, name: str) -> float | None:
        if self.floor is None:
            return None
        if kind == "overall":
            return self.floor.overall
        return (self.floor.tasks if kind == "task" else self.floor.categories).get(name)

    def _statistics_lines(self) -> list[str]:
        """Each side's overall 95% interval, then the paired difference and retained share."""
        a, b = self.labels
        paired, reason = self.paired()
        if paired is None:
            return [f"note: {reason}"]
        unit = self.baseline.cluster_unit
        lines = [f"95% CI: percentile bootstrap over {unit}s ({paired.resamples} resamples, seed {paired.seed})"]
        if paired.clusters < FEW_CLUSTERS:
            lines.append(f"note: {_few(unit)}; the sign-flip test stays valid")
        if paired.only_a or paired.only_b:
            lines.append(f"note: {paired.only_a} questions only in {a}, {paired.only_b} only in {b}; the paired "
                         f"figures are over the {paired.questions} common questions ({a} {paired.a:.2f}, "
                         f"{b} {paired.b:.2f})")
        test = "exact" if paired.exact else f"{paired.flips} random sign flips"
        if paired.exact and paired.flips > 1 and 2 / paired.flips >= 0.05:
            differing = _many(paired.flips.bit_length() - 1, f"differing {unit}")
            test += f"; with {differing} no p below {2 / paired.flips:.2g} is possible"
        lines.append(f"paired over {_many(paired.clusters, unit)}, {paired.questions} questions: difference "
                     f"{paired.difference:+.2f} points {format_interval(paired.ci)}, p = {format_p(paired.p_value)} "
                     f"({unit}-level sign-flip test, {test}); "
                     f"{'not ' if paired.p_value >= 0.05 else ''}significant at 5%")
        if paired.retained is not None:
            lines.append(f"retained {paired.retained:.1f}% {format_interval(paired.retained_ci)} "
                         f"(95% CI, paired bootstrap over the same {unit}s)")
        return lines

    def to_json(self) -> dict:
        """{"labels": [a, b], "tasks"/"categories": {name: entry}, "overall": entry} where
        entry = {"a": value, "b": value, "delta": b - a, "retained": 100 * b / a} (with a floor also
        "floor" and "above_floor", `above_floor`); with per-question
        outcomes on both sides also "a_ci"/"b_ci" (95% intervals) in each entry, "retained_ci" and
        "paired" ({"difference", "ci", "p_value", ...}), else "paired": null and "statistics_note"."""
        out: dict = {"labels": list(self.labels), "tasks": {}, "categories": {}}
        paired, reason = self.paired()
        both = (self.baseline.intervals(), self.other.intervals()) if paired is not None else None
        for kind, name, base, other in self.rows():
            entry = {
                "a": base,
                "b": other,
                "delta": None if base is None or other is None else other - base,
                "retained": retained(base, other),
            }
            if self.floor is not None:
                entry["floor"] = self._floor_value(kind, name)
                entry["above_floor"] = above_floor(base, other, entry["floor"])
            if both is not None:
                for key, intervals in zip(("a_ci", "b_ci"), both):
                    entry[key] = (intervals.overall if kind == "overall" else
                                  (intervals.tasks if kind == "task" else intervals.categories).get(name))
            if kind == "overall":
                out["overall"] = entry
            else:
                out["tasks" if kind == "task" else "categories"][name] = entry
        out["paired"] = None if paired is None else paired.to_json()
        out["retained_ci"] = None if paired is None else paired.retained_ci
        if paired is None:
            out["statistics_note"] = reason
        return out


def compare_reports(
    baseline: Report, other: Report, labels: tuple[str, str] = ("baseline", "compressed"), floor: Report | None = None
) -> Comparison:
    """Side-by-side comparison of `other` against `baseline` (and above `floor`, when given)."""
    return Comparison(baseline, other, tuple(labels), floor)


def retained(baseline: float | None, other: float | None) -> float | None:
    """Accuracy retained by `other`, in percent of `baseline` (None when undefined)."""
    if baseline is None or other is None or baseline == 0:
        return None
    return 100.0 * other / baseline


def above_floor(baseline: float | None, other: float | None, floor: float | None) -> float | None:
    """Retention above a floor, in percent: (other - floor) / (baseline - floor); None when
    undefined (a value missing, or the baseline no better than the floor)."""
    if baseline is None or other is None or floor is None or baseline <= floor:
        return None
    return 100.0 * (other - floor) / (baseline - floor)


# ---------------------------------------------------------------------------------------------
# Helpers


def _display_groups(*reports: Report) -> list[tuple[str | None, list[str]]]:
    """(category, tasks) in display order over all reports; tasks outside every group (reports
    read from hand-written JSON) come last under category None."""
    order: dict[str, list[str]] = {}
    for report in reports:
        for name, tasks in report.groups.items():
            merged = order.setdefault(name, [])
            merged.extend(t for t in tasks if t not in merged)
        for name in report.categories:
            order.setdefault(name, [])
    grouped = {task for tasks in order.values() for task in tasks}
    loose: list[str] = []
    for report in reports:
        loose.extend(t for t in report.tasks if t not in grouped and t not in loose)
    out: list[tuple[str | None, list[str]]] = list(order.items())
    if loose:
        out.append((None, loose))
    return out


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def _micro(counts: Mapping[str, Mapping[str, int]], tasks: Sequence[str]) -> float:
    correct = sum(counts[t]["correct"] for t in tasks)
    total = sum(counts[t]["total"] for t in tasks)
    return 100.0 * correct / total


def _few(unit: str) -> str:
    return (f"with fewer than {FEW_CLUSTERS} {unit}s percentile bootstrap intervals are too narrow "
            "(they under-cover)")


def _many(count: int, unit: str) -> str:
    return f"{count} {unit}" + ("" if count == 1 else "s")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"
