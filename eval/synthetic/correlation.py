"""ER against accuracy: does evidence retention predict what a model answers (issue 33)?

Inputs are the JSONs the testbed already writes: one ER JSON (`stc eval synthetic --evidence
--json`: a run per method and budget, each with its per-question outcomes) and accuracy JSONs
(`stc eval synthetic --method M --keep-ratio K --json`: the method's per-question outcomes and
the dense baseline's). `match_points` pairs each accuracy JSON with the ER run of the same method
at the same keep ratio (their configs, a seeded method's seed aside, must be equal) and refuses,
with an `EvalDataError`, files made on other episodes, another generator, frame count or model.

Per (method, budget) point: ER and accuracy (micro, percent), each with its episode-bootstrap
interval. Over the points (dense left out: it is the reference, not a selector at a budget):
Pearson r with a bootstrap interval over episodes (every resample draws episodes once and
recomputes every point's ER and accuracy on them, then r), and the least-squares calibration line
accuracy = a + b * ER with b's interval from the same resamples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stc.eval.reporting import EvalDataError
from stc.eval.statistics import RESAMPLES, SEED, format_interval, percentile_interval, resample_weights


@dataclass
class Point:
    """One (method, budget): per-episode counts of ER (all draws) and of the model's accuracy."""

    method: str
    keep: float | None  # None: dense, or a method without a budget (stc-cacher)
    er: tuple[np.ndarray, np.ndarray]  # (retained, total) per episode
    accuracy: tuple[np.ndarray, np.ndarray]  # (correct, total) per episode
    source: str

    @property
    def dense(self) -> bool:
        """The reference (left out of the fit); a budget-free method such as stc-cacher is a point."""
        return self.method == "dense"


def _config_key(config: dict | None) -> object:
    """A config dict as the matching compares it: a seeded method's seed left out (the ER runner
    draws its own seeds per episode and draw)."""
    if config is None:
        return None
    config = dict(config)
    if isinstance(config.get("options"), dict):
        config["options"] = {k: v for k, v in config["options"].items() if k != "seed"}
    return repr(sorted(config.items()))


def _counts(outcomes: list[dict], episodes: list, source: str) -> tuple[np.ndarray, np.ndarray]:
    index = {episode: i for i, episode in enumerate(episodes)}
    hits, total = np.zeros(len(episodes)), np.zeros(len(episodes))
    for outcome in outcomes:
        if outcome["cluster"] not in index:
            raise EvalDataError(f"{source}: episode {outcome['cluster']} is not in the ER JSON's episodes")
        hits[index[outcome["cluster"]]] += bool(outcome["correct"])
        total[index[outcome["cluster"]]] += 1
    return hits, total


def _questions(outcomes: list[dict]) -> set[tuple[str, str, str]]:
    """(qid, task, episode) of each question, an ER draw's "@d" suffix dropped."""
    return {(str(o["qid"]).split("@")[0], str(o["task"]), str(o["cluster"])) for o in outcomes}


def _outcomes(report: dict, source: str) -> list[dict]:
    outcomes = report.get("outcomes") if isinstance(report, dict) else None
    if not outcomes:
        raise EvalDataError(f"{source}: no per-question outcomes (write it with a current `stc eval synthetic --json`)")
    return outcomes


def match_points(er_data: dict, accuracy: dict[str, dict], er_source: str = "ER JSON",
                 unmatched: list[str] | None = None) -> list[Point]:
    """The points of the accuracy JSONs (source -> data) matched to the ER JSON's runs, dense
    first (from the baseline every accuracy JSON carries, with the ER run of dense if there is
    one). EvalDataError for a file that is no such JSON, that no ER run matches (given a list
    `unmatched`, such a file's source is appended to it and the file left out instead), that
    repeats a point, or that was made on other episodes, generator, frame count or model."""
    if not isinstance(er_data, dict) or "runs" not in er_data:
        raise EvalDataError(f"{er_source}: not an ER JSON (stc eval synthetic --evidence --json writes one)")
    runs = {}
    for run in er_data["runs"]:
        runs.setdefault(_config_key(run.get("config")), run)
    episodes = sorted({o["cluster"] for run in er_data["runs"] for o in _outcomes(run["report"], er_source)},
                      key=lambda c: (str(type(c)), str(c)))
    asked = _questions(_outcomes(er_data["runs"][0]["report"], er_source))
    points: dict[object, Point] = {}
    baseline = None
    for source, data in accuracy.items():
        if not isinstance(data, dict) or "baseline" not in data or "method" not in data:
            raise EvalDataError(f"{source}: not an accuracy JSON (stc eval synthetic --method M --json writes one)")
        for field in ("generator", "frames", "model"):
            if field in er_data and data.get(field) != er_data[field]:
                raise EvalDataError(f"{source}: {field} {data.get(field)!r}, but the ER JSON has {er_data[field]!r}: "
                                    "not the same benchmark")
        if _questions(_outcomes(data, source)) != asked:
            raise EvalDataError(f"{source}: other questions than the ER JSON's ({len(_outcomes(data, source))} "
                                f"against {len(asked)}): not the same episodes (--seed, --n, --generator)")
        key = _config_key(data["config"])
        if key not in runs and unmatched is not None:
            unmatched.append(source)
            continue
        if key not in runs:
            keep = (data["config"] or {}).get("keep_ratio")
            raise EvalDataError(f"{source}: the ER JSON has no run of {data['method']} at keep {keep}")
        if key in points:
            raise EvalDataError(f"{source}: {data['method']} at this keep ratio is given twice "
                                f"(also {points[key].source})")
        run = runs[key]
        er_counts = _counts(_outcomes(run["report"], er_source), episodes, er_source)
        points[key] = Point(run["method"], run["budget"], er_counts, _counts(_outcomes(data, source), episodes, source),
                            source)
        if baseline is None:
            baseline = (source, data["baseline"])
        elif _outcomes(data["baseline"], source) != _outcomes(baseline[1], baseline[0]):
            raise EvalDataError(f"{source}: its dense baseline differs from {baseline[0]}'s "
                                "(another model or settings)")
    if baseline is None:
        raise EvalDataError("no accuracy JSON given")
    dense_run = runs.get(None)
    dense_er = _counts(_outcomes(dense_run["report"], er_source), episodes, er_source) if dense_run else None
    dense = Point("dense", None, dense_er, _counts(_outcomes(baseline[1], baseline[0]), episodes, baseline[0]),
                  baseline[0])
    return [dense, *points.values()]


def _percent(counts, weights: np.ndarray | None = None) -> np.ndarray | float:
    hits, total = counts
    if weights is None:
        return 100.0 * hits.sum() / total.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * (weights @ hits) / (weights @ total)


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis (NaN where either side is constant)."""
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


def calibration_line(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the least-squares line y = a + b * x along the last axis."""
    dx = x - x.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        b = (dx * (y - y.mean(-1, keepdims=True))).sum(-1) / (dx * dx).sum(-1)
    return y.mean(-1) - b * x.mean(-1), b


@dataclass
class Correlation:
    points: list[Point]
    er: list[float | None]  # per point (None: dense without an ER run)
    er_ci: list[list[float] | None]
    accuracy: list[float]
    accuracy_ci: list[list[float] | None]
    r: float
    r_ci: list[float] | None
    a: float
    b: float
    b_ci: list[float] | None
    episodes: int
    resamples: int

    @property
    def dense_accuracy(self) -> float:
        return self.accuracy[0]

    def retained(self, index: int) -> float | None:
        """Accuracy retained, in percent of dense (None when dense scores 0)."""
        return 100.0 * self.accuracy[index] / self.dense_accuracy if self.dense_accuracy else None

    def to_json(self) -> dict:
        rows = [{"method": p.method, "keep": p.keep, "er": e, "er_ci": ec, "accuracy": acc, "accuracy_ci": ac,
                 "retained": self.retained(i), "source": p.source}
                for i, (p, e, ec, acc, ac) in enumerate(zip(self.points, self.er, self.er_ci, self.accuracy,
                                                            self.accuracy_ci))]
        return {"points": rows, "pearson_r": self.r, "pearson_r_ci": self.r_ci,
                "line": {"a": self.a, "b": self.b, "b_ci": self.b_ci}, "episodes": self.episodes,
                "resamples": self.resamples, "interval": "percentile bootstrap over episodes (95%)",
                "fit_over": "every point but dense"}


def correlate(points: list[Point], resamples: int = RESAMPLES, seed: int = SEED) -> Correlation:
    """Per-point ER and accuracy with intervals, r and the calibration line over the points but
    dense, each interval from the same episode resamples. ValueError with fewer than 3 points."""
    fitted = [p for p in points if not p.dense]
    if len(fitted) < 3:
        raise ValueError(f"a correlation needs at least 3 (method, budget) points besides dense, got {len(fitted)}")
    weights = resample_weights(len(fitted[0].er[0]), resamples, seed)
    er = np.array([_percent(p.er) for p in fitted])
    acc = np.array([_percent(p.accuracy) for p in fitted])
    boot_er = np.stack([_percent(p.er, weights) for p in fitted], -1)  # [resamples, points]
    boot_acc = np.stack([_percent(p.accuracy, weights) for p in fitted], -1)
    a, b = calibration_line(er, acc)
    _, boot_b = calibration_line(boot_er, boot_acc)

    def interval(counts):
        return None if counts is None else percentile_interval(_percent(counts, weights))

    return Correlation(
        points=points,
        er=[None if p.er is None else float(_percent(p.er)) for p in points],
        er_ci=[interval(p.er) for p in points],
        accuracy=[float(_percent(p.accuracy)) for p in points],
        accuracy_ci=[interval(p.accuracy) for p in points],
        r=float(pearson(er, acc)), r_ci=percentile_interval(pearson(boot_er, boot_acc)),
        a=float(a), b=float(b), b_ci=percentile_interval(boot_b),
        episodes=len(weights[0]), resamples=resamples)


def correlation_table(result: Correlation, markdown: bool = False) -> str:
    """The points (method, keep, ER, accuracy, retained) and, below, r and the line."""
    header = ["method", "keep", "ER %", "ER 95% CI", "acc %", "acc 95% CI", "retained %"]
    rows = [[p.method, "-" if p.keep is None else f"{p.keep:g}", "-" if e is None else f"{e:.1f}",
             format_interval(ec), f"{acc:.1f}", format_interval(ac), "-" if result.retained(i) is None else f"{result.retained(i):.1f}"]
            for i, (p, e, ec, acc, ac) in enumerate(zip(result.points, result.er, result.er_ci, result.accuracy,
                                                        result.accuracy_ci))]
    summary = (f"Pearson r (ER, accuracy) over {len(result.points) - 1} points (dense left out) = {result.r:.3f} "
               f"{format_interval(result.r_ci, 3)}; accuracy = {result.a:.1f} + {result.b:.3f} * ER "
               f"(slope {format_interval(result.b_ci, 3)}); 95% percentile bootstrap over {result.episodes} episodes, "
               f"{result.resamples} resamples")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows] + ["", summary])
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows]]
    return "\n".join(lines + ["", summary])
