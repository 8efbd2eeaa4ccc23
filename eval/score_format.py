"""How score tables print (`stc.eval.reporting.Report`, `stc.eval.comparison.Comparison`): the
tasks' display order over reports, percentages, signed deltas, counted nouns and the note on
too few bootstrap clusters."""

from __future__ import annotations

FEW_CLUSTERS = 20  # below this many clusters, bootstrap intervals are flagged as too narrow


def display_groups(*reports) -> list[tuple[str | None, list[str]]]:
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


def few_clusters_note(unit: str) -> str:
    return (f"with fewer than {FEW_CLUSTERS} {unit}s percentile bootstrap intervals are too narrow "
            "(they under-cover)")


def plural(count: int, unit: str) -> str:
    return f"{count} {unit}" + ("" if count == 1 else "s")


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"
