"""Score reports shared by the benchmark scorers, and the input helpers they share.

A `Report` holds per-task accuracy, category averages and an overall score (all in percent),
the correct/total counts behind them, and prints as a text table or a JSON object. A
`Comparison` puts two reports side by side (e.g. dense baseline vs STC) with per-task deltas
and the share of accuracy the second one retains.

Scorers turn every scored question into an outcome `(task, correct)`; `accuracy_report` does
the averaging, macro (OVO-Bench: category = mean of its tasks, overall = mean of categories) or
micro (StreamingBench: category and overall = share of all their questions answered right).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .records import read_answers

AVERAGES = ("macro", "micro")


class EvalDataError(Exception):
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
    non-official rule (shown in the heading)."""

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

    def summary_line(self) -> str:
        """The leaderboard row: each category, then the overall score."""
        parts = [f"{name} {value:.2f}" for name, value in self.categories.items()]
        return " | ".join(parts + [f"Overall {self.overall:.2f}"])

    def to_text(self) -> str:
        """Per-task, per-category and overall accuracy as an aligned table."""
        heading = [self.benchmark if self.scoring == "official"
                   else f"{self.benchmark} ({self.scoring} scoring, not the official rule)"]
        if self.model:
            heading.append(f"model {self.model}")
        if self.source:
            heading.append(self.source)
        lines = [" - ".join(heading), f"{'':40s} {'Acc (%)':>8s}  Correct / Total"]
        for category, tasks in _display_groups(self):
            if category is not None:
                title = self.titles.get(category, "")
                label = f"{category} ({title})" if title else category
                value = self.categories.get(category)
                lines.append(f"{label:40s} {_percent(value):>8s}")
            for task in tasks:
                count = self.counts.get(task)
                fraction = f"{count['correct']:>7d} / {count['total']}" if count else ""
                lines.append(f"  {task:38s} {_percent(self.tasks[task]):>8s}  {fraction}")
        lines.append(f"{'Overall':40s} {self.overall:>8.2f}")
        lines.extend(f"note: {note}" for note in self.notes)
        lines.append(self.summary_line())
        return "\n".join(lines)

    def to_json(self) -> dict:
        """{"tasks": {task: percent}, "categories": {category: percent}, "overall": percent},
        plus the benchmark name, task groups, counts, source, notes, model and scoring rule."""
        return {
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
        }

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
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise EvalDataError(f"{source or 'report'}: malformed score report ({exc!r})") from None


def accuracy_report(
    benchmark: str,
    outcomes: Iterable[tuple[str, bool]],
    groups: Mapping[str, Sequence[str]],
    *,
    average: str,
    titles: Mapping[str, str] | None = None,
    source: str = "",
    notes: Sequence[str] = (),
    model: str = "",
    scoring: str = "official",
) -> Report:
    """A Report from (task, correct) outcomes. Tasks and categories with no outcome are left out.

    average="macro": category = unweighted mean of its tasks, overall = mean of the categories.
    average="micro": category and overall = correct / total over all their questions.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    counts: dict[str, dict[str, int]] = {}
    for task, correct in outcomes:
        count = counts.setdefault(task, {"correct": 0, "total": 0})
        count["correct"] += bool(correct)
        count["total"] += 1
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
    )


# ---------------------------------------------------------------------------------------------
# Comparisons


@dataclass
class Comparison:
    """Two reports side by side: `other` measured against `baseline`."""

    baseline: Report
    other: Report
    labels: tuple[str, str] = ("baseline", "compressed")

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
        lines = [
            f"{b} vs {a}",
            f"{'':32s} {a:>{width}s} {b:>{width}s} {'delta':>8s} {'retained':>9s}",
        ]
        for kind, name, base, other in self.rows():
            label = name if kind != "task" else f"  {name}"
            delta = None if base is None or other is None else other - base
            kept = retained(base, other)
            lines.append(
                f"{label:32s} {_percent(base):>{width}s} {_percent(other):>{width}s} "
                f"{_signed(delta):>8s} {'-' if kept is None else f'{kept:.1f}%':>9s}"
            )
        return "\n".join(lines)

    def to_json(self) -> dict:
        """{"labels": [a, b], "tasks"/"categories": {name: entry}, "overall": entry} where
        entry = {"a": value, "b": value, "delta": b - a, "retained": 100 * b / a}."""
        out: dict = {"labels": list(self.labels), "tasks": {}, "categories": {}}
        for kind, name, base, other in self.rows():
            entry = {
                "a": base,
                "b": other,
                "delta": None if base is None or other is None else other - base,
                "retained": retained(base, other),
            }
            if kind == "overall":
                out["overall"] = entry
            else:
                out["tasks" if kind == "task" else "categories"][name] = entry
        return out


def compare_reports(
    baseline: Report, other: Report, labels: tuple[str, str] = ("baseline", "compressed")
) -> Comparison:
    """Side-by-side comparison of `other` against `baseline`."""
    return Comparison(baseline, other, tuple(labels))


def retained(baseline: float | None, other: float | None) -> float | None:
    """Accuracy retained by `other`, in percent of `baseline` (None when undefined)."""
    if baseline is None or other is None or baseline == 0:
        return None
    return 100.0 * other / baseline


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


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"
