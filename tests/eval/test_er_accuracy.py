"""ER against accuracy (stc.eval.synthetic.correlation and docs/er_accuracy.py) on hand-made JSONs:
a known r and line, the bootstrap interval, matching by method and keep ratio, mismatches refused."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from stc.eval.reporting import EvalDataError
from stc.eval.synthetic.correlation import calibration_line, correlate, correlation_table, match_points, pearson

EPISODES = (11, 12, 13, 14)
TASKS = ("rt_colour", "bt_first")  # two questions an episode: 8 questions per run


def outcomes(hits: int, draws: int = 1) -> list[dict]:
    """The 8 questions, the first `hits` of them (in episode order) correct, repeated per draw."""
    questions = [(f"syn-{e}-{i}", task, e) for e in EPISODES for i, task in enumerate(TASKS)]
    return [{"qid": qid + (f"@{d}" if d else ""), "task": task, "correct": n < hits, "cluster": e}
            for d in range(draws) for n, (qid, task, e) in enumerate(questions)]


def config(method: str, keep: float | None) -> dict | None:
    return None if keep is None else {"method": method, "keep_ratio": keep, "options": {"seed": 0}}


def er_json(points: dict, generator: int = 2) -> dict:
    """points: (method, keep) -> ER hits out of 8 (dense: keep None)."""
    return {"benchmark": "synthetic evidence retention", "episodes": len(EPISODES), "seed": 0, "frames": 32,
            "generator": generator, "model": "testbed", "questions": 8,
            "runs": [{"method": m, "budget": k, "draws": 2, "config": config(m, k),
                      "report": {"overall": 100.0 * h / 8, "outcomes": outcomes(h, draws=2)}}
                     for (m, k), h in points.items()]}


def accuracy_json(method: str, keep: float, hits: int, dense_hits: int = 8, generator: int = 2) -> dict:
    return {"method": method, "config": {**config(method, keep), "options": {}}, "generator": generator,
            "frames": 32, "model": "testbed", "overall": 100.0 * hits / 8, "outcomes": outcomes(hits),
            "baseline": {"overall": 100.0 * dense_hits / 8, "outcomes": outcomes(dense_hits)}}


ER_POINTS = {("dense", None): 8, ("random", 0.3): 2, ("uniform", 0.3): 4, ("stc", 0.3): 6}
ACCURACY = {"random.json": accuracy_json("random", 0.3, 2, dense_hits=6),
            "uniform.json": accuracy_json("uniform", 0.3, 6, dense_hits=6),
            "stc.json": accuracy_json("stc", 0.3, 4, dense_hits=6)}


def test_pearson_and_line_of_known_points():
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])
    assert pearson(x, y) == pytest.approx(0.5)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0) and pearson(x, -x) == pytest.approx(-1.0)
    a, b = calibration_line(x, y)
    assert (a, b) == (pytest.approx(1.0), pytest.approx(0.5))


def test_a_known_r_and_line_from_matched_jsons():
    """ER 25/50/75 against accuracy 25/75/50: r = 0.5, accuracy = 25 + 0.5 * ER; dense from the baseline."""
    result = correlate(match_points(er_json(ER_POINTS), ACCURACY))
    assert [(p.method, p.keep) for p in result.points] == [("dense", None), ("random", 0.3), ("uniform", 0.3),
                                                           ("stc", 0.3)]
    assert result.er == [100.0, 25.0, 50.0, 75.0] and result.accuracy == [75.0, 25.0, 75.0, 50.0]
    assert result.r == pytest.approx(0.5) and result.r == pytest.approx(np.corrcoef([25, 50, 75], [25, 75, 50])[0, 1])
    assert (result.a, result.b) == (pytest.approx(25.0), pytest.approx(0.5))
    assert result.retained(2) == pytest.approx(100.0) and result.retained(1) == pytest.approx(100 / 3)
    low, high = result.r_ci
    assert -1.0 <= low < result.r < high <= 1.0  # resampling 4 episodes moves r both ways
    assert result.er_ci[0] == [100.0, 100.0] and result.accuracy_ci[1][0] < 25.0 < result.accuracy_ci[1][1]


def test_ties_between_episodes_move_the_bootstrap_together():
    """Accuracy equal to ER at every point and in every episode: every resample gives r = 1, slope 1."""
    accuracy = {f"{m}.json": accuracy_json(m, k, h) for (m, k), h in ER_POINTS.items() if k is not None}
    result = correlate(match_points(er_json(ER_POINTS), accuracy))
    assert result.r == pytest.approx(1.0) and result.r_ci == [pytest.approx(1.0), pytest.approx(1.0)]
    assert result.b_ci == [pytest.approx(1.0), pytest.approx(1.0)] and result.a == pytest.approx(0.0)


@pytest.mark.parametrize("change, message", [
    (lambda acc: acc["stc.json"].update(generator=3), "stc.json: generator 3, but the ER JSON has 2"),
    (lambda acc: acc["stc.json"]["outcomes"].pop(), "stc.json: other questions than the ER JSON's"),
    (lambda acc: acc["stc.json"]["config"].update(keep_ratio=0.15),
     "stc.json: the ER JSON has no run of stc at keep 0.15"),
    (lambda acc: acc.update({"again.json": accuracy_json("stc", 0.3, 4, dense_hits=6)}),
     "again.json: stc at this keep ratio is given twice (also stc.json)"),
    (lambda acc: acc["stc.json"].update(baseline={"outcomes": outcomes(5)}), "stc.json: its dense baseline differs"),
    (lambda acc: acc.update({"er.json": er_json(ER_POINTS)}), "er.json: not an accuracy JSON"),
])
def test_mismatched_files_are_refused(change, message):
    accuracy = json.loads(json.dumps(ACCURACY))
    change(accuracy)
    with pytest.raises(EvalDataError, match="^" + re.escape(message)):
        match_points(er_json(ER_POINTS), accuracy)


def script():
    path = Path(__file__).parents[2] / "docs" / "er_accuracy.py"
    spec = importlib.util.spec_from_file_location("er_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(folder: Path, er: dict, accuracy: dict) -> list[str]:
    (folder / "er.json").write_text(json.dumps(er))
    for name, data in accuracy.items():
        (folder / name).write_text(json.dumps(data))
    return [str(folder / "er.json"), *(str(folder / name) for name in accuracy)]


def test_script_writes_table_png_markdown_and_json(tmp_path, capsys):
    paths = write(tmp_path, er_json(ER_POINTS), ACCURACY)
    png, md, out = tmp_path / "plot.png", tmp_path / "table.md", tmp_path / "r.json"
    assert script().main([*paths, "--png", str(png), "--markdown", str(md), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Pearson r (ER, accuracy) over 3 points (dense left out) = 0.500" in printed
    assert "accuracy = 25.0 + 0.500 * ER" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert md.read_text().startswith("| method | keep | ER % |")
    data = json.loads(out.read_text())
    assert data["pearson_r"] == pytest.approx(0.5) and data["line"]["a"] == pytest.approx(25.0)
    assert [row["method"] for row in data["points"]] == ["dense", "random", "uniform", "stc"]


def test_script_refuses_another_generator_in_one_line(tmp_path, capsys):
    accuracy = {**ACCURACY, "stc.json": accuracy_json("stc", 0.3, 4, dense_hits=6, generator=3)}
    paths = write(tmp_path, er_json(ER_POINTS), accuracy)
    assert script().main(paths) == 2
    err = capsys.readouterr().err
    assert err.startswith("er_accuracy.py: error: ") and "generator 3" in err and err.count("\n") == 1


def test_script_refuses_too_few_points(tmp_path, capsys):
    paths = write(tmp_path, er_json(ER_POINTS), {"stc.json": ACCURACY["stc.json"]})
    assert script().main(paths) == 2
    assert "at least 3 (method, budget) points" in capsys.readouterr().err


def test_a_budget_free_method_is_a_point_and_dense_only_the_reference():
    """stc-cacher has no keep ratio (its ER run's budget is None), yet it is a selector's point:
    it enters the fit; only dense is left out."""
    cacher = {"method": "stc-cacher", "keep_ratio": 0.3, "options": {}}
    er = er_json(ER_POINTS)
    er["runs"].append({"method": "stc-cacher", "budget": None, "draws": 2, "config": cacher,
                       "report": {"overall": 100.0, "outcomes": outcomes(8, draws=2)}})
    accuracy = {**ACCURACY, "cacher.json": {**accuracy_json("stc", 0.3, 7, dense_hits=6), "method": "stc-cacher",
                                            "config": cacher}}
    result = correlate(match_points(er, accuracy))
    assert [(p.method, p.keep, p.dense) for p in result.points][-1] == ("stc-cacher", None, False)
    assert result.r == pytest.approx(np.corrcoef([25, 50, 75, 100], [25, 75, 50, 87.5])[0, 1])
    assert correlation_table(result).splitlines()[-3].split()[:3] == ["stc-cacher", "-", "100.0"]


def test_script_skips_unmatched_runs_only_when_asked(tmp_path, capsys):
    extra = {**ACCURACY, "tome.json": accuracy_json("tome", 0.3, 5, dense_hits=6)}
    paths = write(tmp_path, er_json(ER_POINTS), extra)
    assert script().main(paths) == 2
    assert "tome.json: the ER JSON has no run of tome at keep 0.3" in capsys.readouterr().err
    assert script().main([*paths, "--skip-unmatched"]) == 0
    captured = capsys.readouterr()
    assert "over 3 points (dense left out) = 0.500" in captured.out
    assert captured.err == f"er_accuracy.py: left out {tmp_path / 'tome.json'}: the ER JSON has no run of its method at its keep ratio\n"
