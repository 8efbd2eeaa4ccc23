"""Two score reports side by side (`Comparison`: e.g. dense baseline vs STC): per-task deltas,
the share of accuracy the second retains (`retained`), the retention above a floor run
(`above_floor`) and, when both carry per-question outcomes, a paired test (`statistics`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stc.eval.score_format import FEW_CLUSTERS, display_groups, few_clusters_note, percent, plural, signed
from stc.eval.statistics import Paired, format_interval, format_p, paired_comparison

if TYPE_CHECKING:  # annotations only: stc.eval.reporting imports this module to re-export its names
    from stc.eval.reporting import Report


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
        for category, tasks in display_groups(self.baseline, self.other):
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
                floor_columns = f" {percent(floor):>8s} {'-' if above is None else f'{above:.1f}%':>12s}"
            lines.append(
                f"{label:32s} {percent(base):>{width}s}{ci(both[0], kind, name) if both else ''} "
                f"{percent(other):>{width}s}{ci(both[1], kind, name) if both else ''} "
                f"{signed(delta):>8s} {'-' if kept is None else f'{kept:.1f}%':>9s}{floor_columns}"
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
            lines.append(f"note: {few_clusters_note(unit)}; the sign-flip test stays valid")
        if paired.only_a or paired.only_b:
            lines.append(f"note: {paired.only_a} questions only in {a}, {paired.only_b} only in {b}; the paired "
                         f"figures are over the {paired.questions} common questions ({a} {paired.a:.2f}, "
                         f"{b} {paired.b:.2f})")
        test = "exact" if paired.exact else f"{paired.flips} random sign flips"
        if paired.exact and paired.flips > 1 and 2 / paired.flips >= 0.05:
            differing = plural(paired.flips.bit_length() - 1, f"differing {unit}")
            test += f"; with {differing} no p below {2 / paired.flips:.2g} is possible"
        lines.append(f"paired over {plural(paired.clusters, unit)}, {paired.questions} questions: difference "
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
