"""OVO-Bench loader and official scoring rules; score reports and the `stc eval` command.

Hand-made snippets cover every rule; the tests against the real annotation file and the
official raw outputs of published models run when ../shared is present.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import stc.cli
from stc.eval.ovo_bench import (
    CRR_PROMPT,
    MULTIPLE_CHOICE_PROMPT,
    is_correct,
    load_ovo_bench,
    multiple_choice_prompt,
    score_count,
    score_multiple_choice,
    score_ovo_bench,
    score_ovo_bench_models,
    score_yes_no,
)
from stc.eval.records import Answer
from stc.eval.reporting import EvalDataError, Report, accuracy_report, compare_reports

SHARED = Path(__file__).resolve().parents[3] / "shared"
OVO_DIR = SHARED / "benchmarks" / "ovo-bench"
ANNOTATION = OVO_DIR / "ovo_bench_new.json"
RESULTS = OVO_DIR / "results"
needs_shared = pytest.mark.skipif(not ANNOTATION.exists(), reason="shared benchmark files not present")

# ----------------------------------------------------------------------------------------------
# Rules


@pytest.mark.parametrize("response, gt, correct", [
    ("B", "B", True),
    ("B.", "B", True),
    ("The answer is B", "B", True),
    ("b", "B", False),                 # case-sensitive, as official
    ("C. Apple", "A", True),           # substring rule: any "A" in the text counts (official quirk)
    ("", "A", False),
    (None, "A", False),                # failed inference
    (["B"], "B", True),                # Qwen2-VL batch-decoded list
    (["C"], "B", False),
])
def test_multiple_choice_rule(response, gt, correct):
    assert score_multiple_choice(response, gt) is correct


@pytest.mark.parametrize("response, count, correct", [
    ("3", 3, True),
    ("3 times", 3, True),
    (" 10\n", 10, True),
    ("1, 2, 3", 3, False),             # digits concatenate to "123"
    ("three", 3, False),
    ("0", 0, True),
    ("", 0, False),
    (None, 1, False),
    (["4"], 4, True),
    ("4", "4", True),
])
def test_count_rule(response, count, correct):
    assert score_count(response, count) is correct


@pytest.mark.parametrize("response, expected, correct", [
    ("Yes", "Yes", True),
    ("Yes.", "Yes", True),
    ("No.", "No", True),
    ("yes", "Yes", False),             # case-sensitive substring, as official
    ("Y", "Yes", True),                # bare letters count
    ("N", "No", True),
    ("N", "Yes", False),
    (" Y", "Yes", False),              # only the exact bare letter
    ("No, not yet. Yes", "Yes", True),
    (None, "No", False),
    (["No"], "No", True),
    (["Y"], "Yes", True),
])
def test_yes_no_rule(response, expected, correct):
    assert score_yes_no(response, expected) is correct


def test_yes_no_rule_rejects_other_expectations():
    with pytest.raises(ValueError):
        score_yes_no("Yes", "yes")


# ----------------------------------------------------------------------------------------------
# Loader on a hand-made annotation file

SNIPPET = [
    {"id": 0, "task": "EPM", "video": "Ego4D/clips/a.mp4", "realtime": 215, "question": "Who?",
     "answer": "blue", "options": ["red", "green", "blue"], "gt": 2},
    {"id": 1, "task": "OCR", "video": "AutoEvalMetaData/1.mp4", "realtime": 54.2, "question": "What text?",
     "answer": "x", "options": ["x", "y", "z", "w"], "gt": 0},
    {"id": 7, "task": "CRR", "video": "MovieNet/m.mp4", "question": "What does she do?", "answer": "Walks past.",
     "ask_time": 297, "clue_time": 308, "test_info": [{"realtime": 297, "type": 0}, {"realtime": 310, "type": 1}]},
    {"id": 8, "task": "SSR", "video": "COIN/c.mp4", "tutorial": "T", "all_steps": ["cut", "glue"],
     "start_time": [1, 5], "end_time": [4, 9],
     "test_info": [{"realtime": 3, "step": "cut", "type": 1}, {"realtime": 2, "step": "glue", "type": 0}]},
    {"id": 9, "task": "REC", "video": "perception_test/v.mp4", "activity": "jumping", "start_times": [6],
     "end_times": [17], "test_info": [{"realtime": 17, "count": 1}, {"realtime": 32.0, "count": 2}]},
]


@pytest.fixture
def annotation(tmp_path):
    path = tmp_path / "ovo_bench_new.json"
    path.write_text(json.dumps(SNIPPET))
    return path


def test_loader_multiple_choice(annotation):
    queries = {q.qid: q for q in load_ovo_bench(annotation)}
    epm = queries["0"]
    assert (epm.task, epm.kind, epm.answer, epm.time, epm.video) == ("EPM", "mc", "C", 215.0, "Ego4D/clips/a.mp4")
    assert epm.extra == {"id": 0, "category": "BT", "visible_until": 215.0}
    assert "Question: Who?\nOptions:\nA. red; B. green; C. blue;\n" in epm.prompt
    assert epm.prompt == MULTIPLE_CHOICE_PROMPT.format("Who?", "A. red; B. green; C. blue;")
    assert "Respond only with the letter" in epm.prompt
    assert queries["1"].extra["category"] == "RT"
    assert queries["1"].extra["visible_until"] == 55.0  # the model sees video [0, ceil(realtime)]
    assert queries["1"].time == pytest.approx(54.2)


def test_loader_forward_probes(annotation):
    queries = {q.qid: q for q in load_ovo_bench(annotation)}
    assert sorted(queries) == ["0", "1", "7#0", "7#1", "8#0", "8#1", "9#0", "9#1"]
    crr = queries["7#1"]
    assert (crr.kind, crr.answer, crr.time) == ("yesno", "Yes", 310.0)
    assert crr.prompt == CRR_PROMPT.format("What does she do?")
    assert "Walks past" not in crr.prompt
    assert queries["7#0"].answer == "No"
    ssr = queries["8#1"]
    assert (ssr.answer, ssr.extra["step"], ssr.extra["probe"], ssr.extra["id"]) == ("No", "glue", 1, 8)
    assert "\nglue\n" in ssr.prompt
    rec = queries["9#1"]
    assert (rec.kind, rec.answer, rec.extra["category"]) == ("count", "2", "FAR")
    assert "How many times did they jumping?" in rec.prompt


def test_loader_task_filter_and_errors(annotation, tmp_path):
    assert {q.task for q in load_ovo_bench(annotation, tasks=["REC", "EPM"])} == {"REC", "EPM"}
    with pytest.raises(ValueError, match="XYZ"):
        load_ovo_bench(annotation, tasks=["XYZ"])
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"id": 3, "task": "OCR", "video": "v.mp4", "realtime": 1, "question": "q"}]))
    with pytest.raises(EvalDataError, match="broken.json"):
        load_ovo_bench(broken)
    with pytest.raises(EvalDataError, match="no such file"):
        load_ovo_bench(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EvalDataError, match="not valid JSON"):
        load_ovo_bench(tmp_path / "bad.json")


def test_is_correct_dispatches_on_task(annotation):
    queries = {q.qid: q for q in load_ovo_bench(annotation)}
    assert is_correct(queries["0"], "C")
    assert is_correct(queries["9#1"], "2 times")
    assert is_correct(queries["8#0"], "Y") and not is_correct(queries["8#0"], "No")


# ----------------------------------------------------------------------------------------------
# Scoring official raw outputs and answers JSONL


def write_official(directory: Path) -> Path:
    """Official-format results for SNIPPET: EPM right, OCR wrong (None), CRR 1/2, SSR 2/2, REC 1/2."""
    directory.mkdir(parents=True)
    backward = [{"id": 0, "task": "EPM", "response": ["C"], "ground_truth": "C"}]
    realtime = [{"id": 1, "task": "OCR", "response": None, "ground_truth": "A"}]
    forward = [
        {**SNIPPET[2], "test_info": [{"realtime": 297, "type": 0, "response": "No."},
                                     {"realtime": 310, "type": 1, "response": "No"}]},
        {**SNIPPET[3], "test_info": [{"realtime": 3, "step": "cut", "type": 1, "response": "Y"},
                                     {"realtime": 2, "step": "glue", "type": 0, "response": "N"}]},
        {**SNIPPET[4], "test_info": [{"realtime": 17, "count": 1, "response": "1"},
                                     {"realtime": 32.0, "count": 2, "response": "3"}]},
    ]
    (directory / "M_EPM_offline.json").write_text(json.dumps({"backward": backward, "realtime": [], "forward": []}))
    (directory / "M_OCR_offline.json").write_text(json.dumps({"backward": [], "realtime": realtime, "forward": []}))
    (directory / "M_FWD_offline.json").write_text(json.dumps({"backward": [], "realtime": [], "forward": forward}))
    return directory


def test_score_official_outputs(tmp_path):
    report = score_ovo_bench(write_official(tmp_path / "M"))
    assert report.tasks == {"OCR": 0.0, "EPM": 100.0, "REC": 50.0, "SSR": 100.0, "CRR": 50.0}
    assert report.categories == {"RT": 0.0, "BT": 100.0, "FAR": pytest.approx(200 / 3)}
    assert report.overall == pytest.approx((0 + 100 + 200 / 3) / 3)
    assert report.counts["REC"] == {"correct": 1, "total": 2}
    # a list of files scores the same as their directory
    files = sorted((tmp_path / "M").glob("*.json"))
    assert score_ovo_bench(files).tasks == report.tasks


def write_wrong_model(directory: Path, name: str = "N") -> Path:
    """Official-format results of another model: EPM wrong."""
    directory.mkdir(parents=True)
    backward = [{"id": 0, "task": "EPM", "response": "A", "ground_truth": "C"}]
    data = {"backward": backward, "realtime": [], "forward": []}
    (directory / f"{name}_EPM_offline.json").write_text(json.dumps(data))
    return directory


def test_results_of_several_models_are_scored_apart(tmp_path):
    m = score_ovo_bench(write_official(tmp_path / "results" / "M"))
    write_wrong_model(tmp_path / "results" / "N")
    for given in ([tmp_path / "results" / "M", tmp_path / "results" / "N"],   # model folders
                  tmp_path / "results",                                       # their parent folder
                  sorted((tmp_path / "results").glob("*/*.json"))):           # their files
        reports = score_ovo_bench_models(given)
        assert [r.model for r in reports] == ["M", "N"]
        assert reports[0].tasks == m.tasks and reports[1].tasks == {"EPM": 0.0}
    assert score_ovo_bench_models(tmp_path / "results")[1].source == str(tmp_path / "results" / "N")
    with pytest.raises(EvalDataError, match=r"results: holds the results of 2 models \(M, N\); give one"):
        score_ovo_bench(tmp_path / "results")


def test_one_folder_of_several_models_files_is_split_by_file_name(tmp_path):
    write_official(tmp_path / "M")
    mixed = write_wrong_model(tmp_path / "mixed")
    for path in (tmp_path / "M").glob("*.json"):
        (mixed / path.name).write_text(path.read_text())
    with pytest.raises(EvalDataError, match="M_FWD_offline.json: cannot tell which model's results these are"):
        score_ovo_bench_models(mixed)   # FWD is no task: not an official name
    (mixed / "M_FWD_offline.json").rename(mixed / "M_REC_SSR_CRR_offline.json")
    reports = score_ovo_bench_models(mixed)
    assert [r.model for r in reports] == ["M", "N"]
    assert reports[0].tasks == score_ovo_bench(tmp_path / "M").tasks and reports[1].tasks == {"EPM": 0.0}


def test_runs_are_scored_apart_and_same_named_folders_keep_their_paths(annotation, tmp_path):
    for run, response in (("dense", "C"), ("stc", "A")):
        (tmp_path / "runs" / run).mkdir(parents=True)
        write_answers(tmp_path / "runs" / run / "answers.jsonl", {"0": response})
    reports = score_ovo_bench_models(tmp_path / "runs", anno=annotation)
    assert [(r.model, r.tasks) for r in reports] == [("dense", {"EPM": 100.0}), ("stc", {"EPM": 0.0})]
    a, b = write_wrong_model(tmp_path / "a" / "N"), write_wrong_model(tmp_path / "b" / "N")
    assert [r.model for r in score_ovo_bench_models([a, b])] == [str(a), str(b)]


def test_score_rejects_non_results(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"foo": []}))
    with pytest.raises(EvalDataError, match="not an OVO-Bench results file"):
        score_ovo_bench(path)
    with pytest.raises(EvalDataError, match="no such file"):
        score_ovo_bench(tmp_path / "nothing")


def write_answers(path: Path, responses: dict[str, object]) -> Path:
    with open(path, "w") as f:
        for qid, response in responses.items():
            f.write(json.dumps(Answer(qid=qid, response=response, video="v", time=0.0, task="?").to_json()) + "\n")
    return path


def test_score_answers_jsonl(annotation, tmp_path):
    answers = write_answers(tmp_path / "answers.jsonl", {
        "0": "C", "1": "B",                       # EPM right, OCR wrong
        "7#0": "No", "7#1": "No",                 # CRR 1/2
        "8#0": "Yes",                             # SSR 1/1 answered, 8#1 missing
        "9#0": "1", "9#1": "2",                   # REC 2/2
        "999": "A",                               # matches no query
    })
    report = score_ovo_bench(answers, anno=annotation)
    assert report.tasks == {"OCR": 0.0, "EPM": 100.0, "REC": 100.0, "SSR": 100.0, "CRR": 50.0}
    assert any("1 queries have no answer" in n for n in report.notes)
    assert any("1 answers match no query" in n for n in report.notes)
    strict = score_ovo_bench(answers, anno=annotation, missing_as_wrong=True)
    assert strict.tasks["SSR"] == 50.0
    # a directory of answers (a score JSON lying next to them is not mistaken for results)
    (tmp_path / "score.json").write_text("{}")
    assert score_ovo_bench(tmp_path, anno=annotation).tasks == report.tasks


def test_score_answers_errors(annotation, tmp_path):
    answers = write_answers(tmp_path / "answers.jsonl", {"0": "C"})
    with pytest.raises(EvalDataError, match="--anno"):
        score_ovo_bench(answers)
    stray = write_answers(tmp_path / "stray.jsonl", {"nope": "C"})
    with pytest.raises(EvalDataError, match="none of the 1 answers"):
        score_ovo_bench(stray, anno=annotation)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EvalDataError, match="no answer records"):
        score_ovo_bench(empty, anno=annotation)


# ----------------------------------------------------------------------------------------------
# Reports


def test_report_json_and_text():
    report = accuracy_report("B", [("t1", True), ("t1", False), ("t2", True)], {"C1": ["t1"], "C2": ["t2", "t3"]},
                             average="macro", titles={"C1": "Category one"})
    data = report.to_json()
    assert data["tasks"] == {"t1": 50.0, "t2": 100.0}
    assert data["categories"] == {"C1": 50.0, "C2": 100.0}
    assert data["overall"] == 75.0
    assert data["counts"]["t1"] == {"correct": 1, "total": 2}
    assert Report.from_json(json.loads(json.dumps(data))).to_json() == data
    text = report.to_text()
    assert "C1 (Category one)" in text and "C1 50.00 | C2 100.00 | Overall 75.00" in text
    micro = accuracy_report("B", [("t1", True), ("t1", False), ("t2", True)], {"C": ["t1", "t2"]}, average="micro")
    assert micro.categories["C"] == pytest.approx(200 / 3) and micro.overall == pytest.approx(200 / 3)
    with pytest.raises(EvalDataError, match="unknown task"):
        accuracy_report("B", [("zz", True)], {"C": ["t1"]}, average="macro")
    with pytest.raises(EvalDataError, match="not a score report"):
        Report.from_json({"tasks": {}})


def test_compare_reports():
    base = Report("B", {"t1": 50.0, "t2": 80.0}, {"C": 65.0}, 65.0, groups={"C": ["t1", "t2"]})
    other = Report("B", {"t1": 40.0, "t2": 80.0}, {"C": 60.0}, 60.0, groups={"C": ["t1", "t2"]})
    comparison = compare_reports(base, other, ("dense", "stc"))
    data = comparison.to_json()
    assert data["labels"] == ["dense", "stc"]
    assert data["tasks"]["t1"] == {"a": 50.0, "b": 40.0, "delta": -10.0, "retained": 80.0}
    assert data["overall"]["retained"] == pytest.approx(100 * 60 / 65)
    text = comparison.to_text()
    assert "stc vs dense" in text and "-10.00" in text and "80.0%" in text
    zero = compare_reports(Report("B", {"t": 0.0}, {}, 0.0), Report("B", {"t": 10.0}, {}, 10.0)).to_json()
    assert zero["tasks"]["t"]["retained"] is None


# ----------------------------------------------------------------------------------------------
# CLI


def test_cli_score_prints_row_and_writes_json(eval_cli, tmp_path, capsys):
    results = write_official(tmp_path / "M")
    out_json = tmp_path / "out" / "score.json"
    assert eval_cli(["eval", "ovo-bench", "score", str(results), "--json", str(out_json)]) == 0
    assert "RT 0.00 | BT 100.00 | FAR 66.67 | Overall 55.56" in capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert {"tasks", "categories", "overall"} <= set(data)
    assert data["categories"]["BT"] == 100.0


def test_cli_compare(eval_cli, tmp_path, annotation, capsys):
    results = write_official(tmp_path / "M")
    score_json = tmp_path / "base.json"
    assert eval_cli(["eval", "ovo-bench", "score", str(results), "--json", str(score_json)]) == 0
    answers = write_answers(tmp_path / "answers.jsonl", {"0": "C", "1": "A"})
    capsys.readouterr()
    code = eval_cli(["eval", "compare", str(score_json), str(answers), "--anno", str(annotation),
                     "--json", str(tmp_path / "cmp.json")])
    assert code == 0
    assert "answers vs base" in capsys.readouterr().out
    assert json.loads((tmp_path / "cmp.json").read_text())["tasks"]["OCR"]["b"] == 100.0


def test_cli_scores_several_models_one_report_each(eval_cli, tmp_path, capsys):
    m, n = write_official(tmp_path / "results" / "M"), write_wrong_model(tmp_path / "results" / "N")
    out_json = tmp_path / "scores.json"
    assert eval_cli(["eval", "ovo-bench", "score", str(m), str(n), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert f"OVO-Bench - model M - {m}\n" in out and f"OVO-Bench - model N - {n}\n" in out
    assert out.endswith("M  RT 0.00 | BT 100.00 | FAR 66.67 | Overall 55.56\nN  BT 0.00 | Overall 0.00\n")
    data = json.loads(out_json.read_text())
    assert data["benchmark"] == "OVO-Bench" and list(data["models"]) == ["M", "N"]
    assert data["models"]["M"]["overall"] == pytest.approx(500 / 9) and data["models"]["N"]["tasks"] == {"EPM": 0.0}
    assert eval_cli(["eval", "compare", str(out_json), str(m)]) == 2
    assert capsys.readouterr().err == f"stc eval: error: {out_json}: holds the reports of 2 models; compare needs " \
                                      "one model's report\n"
    assert eval_cli(["eval", "compare", str(tmp_path / "results"), str(m)]) == 2
    assert "holds the results of 2 models (M, N)" in capsys.readouterr().err


def test_cli_errors_are_one_line(eval_cli, tmp_path, capsys):
    assert eval_cli(["eval", "ovo-bench", "score", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing: no such file or directory" in err and "Traceback" not in err
    (tmp_path / "corrupt.json").write_text("[1, 2")
    assert eval_cli(["eval", "ovo-bench", "score", str(tmp_path / "corrupt.json")]) == 2
    assert "corrupt.json: not valid JSON" in capsys.readouterr().err


def test_cli_modules_do_not_import_transformers():
    import subprocess
    import sys

    code = ("import sys, stc.cli.eval, stc.eval.ovo_bench, stc.eval.streamingbench, stc.eval.reporting; "
            "sys.exit('transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ----------------------------------------------------------------------------------------------
# Real annotation file and official outputs

LLAVA_ONEVISION_ROW = {
    "OCR": 66.44, "ACR": 57.80, "ATR": 73.28, "STU": 53.37, "FPD": 71.29, "OJR": 61.96,
    "EPM": 54.21, "ASI": 55.41, "HLD": 21.51, "REC": 25.64, "SSR": 67.09, "CRR": 58.75,
}
# Category rows (RT, BT, FAR, Overall) our scorer gives for the official outputs. Gemini's is the
# example printed in the official README; LLaVA-OneVision's is the published leaderboard row.
CATEGORY_ROWS = {
    "Gemini": (69.32, 62.54, 57.15, 63.00),
    "InternVL2": (60.39, 43.44, 46.60, 50.15),
    "LLaVA_OneVision": (64.02, 43.71, 50.50, 52.74),
    "LLaVA_Video": (63.52, 40.40, 54.82, 52.91),
    "QWen2VL_7B_": (55.98, 46.46, 48.74, 50.39),
}
GEMINI_README_TASKS = {
    "ASI": 76.35, "HLD": 52.69, "EPM": 58.59, "ATR": 79.31, "ACR": 66.97, "OCR": 85.91,
    "STU": 58.43, "OJR": 61.96, "FPD": 63.37, "REC": 35.53, "SSR": 74.24, "CRR": 61.67,
}


@needs_shared
def test_real_annotation_counts():
    queries = load_ovo_bench(ANNOTATION)
    multiple_choice = [q for q in queries if q.kind == "mc"]
    probes = [q for q in queries if q.kind != "mc"]
    assert len(multiple_choice) == 1468
    assert len(probes) == 1567
    assert len({q.extra["id"] for q in probes}) == 172
    assert len({q.qid for q in queries}) == len(queries) == 3035
    assert {q.task for q in queries} == set(LLAVA_ONEVISION_ROW)


@needs_shared
def test_llava_onevision_leaderboard_row():
    report = score_ovo_bench(RESULTS / "LLaVA_OneVision")
    assert {task: round(value, 2) for task, value in report.tasks.items()} == LLAVA_ONEVISION_ROW
    assert round(report.categories["RT"], 2) == 64.02
    assert round(report.categories["BT"], 2) == 43.71
    assert round(report.categories["FAR"], 2) == 50.50
    assert round(report.overall, 2) == 52.74
    assert report.summary_line() == "RT 64.02 | BT 43.71 | FAR 50.50 | Overall 52.74"


@needs_shared
@pytest.mark.parametrize("model", sorted(CATEGORY_ROWS))
def test_published_model_rows(model):
    report = score_ovo_bench(RESULTS / model)
    row = tuple(round(v, 2) for v in (*report.categories.values(), report.overall))
    assert list(report.categories) == ["RT", "BT", "FAR"]
    assert row == CATEGORY_ROWS[model]
    assert sum(c["total"] for c in report.counts.values()) == 1468 + 1567
    if model == "Gemini":
        assert {task: round(value, 2) for task, value in report.tasks.items()} == GEMINI_README_TASKS


@needs_shared
def test_answers_round_trip_gives_the_official_score(tmp_path):
    """Official LLaVA-OneVision outputs rewritten as answers JSONL score the same via qids."""
    responses = {}
    for path in sorted((RESULTS / "LLaVA_OneVision").glob("*.json")):
        data = json.loads(path.read_text())
        for item in data["backward"] + data["realtime"]:
            responses[str(item["id"])] = item["response"]
        for item in data["forward"]:
            for index, probe in enumerate(item["test_info"]):
                responses[f"{item['id']}#{index}"] = probe["response"]
    answers = write_answers(tmp_path / "answers.jsonl", responses)
    report = score_ovo_bench(answers, anno=ANNOTATION)
    assert report.summary_line().startswith("RT 64.02 | BT 43.71 | FAR 50.50 | Overall 52.74 [")  # with its 95% CI
    assert not report.notes


@needs_shared
def test_cli_reproduces_leaderboard_row(eval_cli, capsys, tmp_path):
    out_json = tmp_path / "llava_ov.json"
    assert eval_cli(["eval", "ovo-bench", "score", str(RESULTS / "LLaVA_OneVision"), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "RT 64.02 | BT 43.71 | FAR 50.50 | Overall 52.74" in out
    assert "HLD" in out and "21.51" in out
    data = json.loads(out_json.read_text())
    assert round(data["overall"], 2) == 52.74 and set(data["tasks"]) == set(LLAVA_ONEVISION_ROW)


@needs_shared
def test_cli_scores_every_model_of_the_results_folder(eval_cli, capsys, tmp_path):
    out_json = tmp_path / "all.json"
    assert eval_cli(["eval", "ovo-bench", "score", str(RESULTS), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert all(f"OVO-Bench - model {model} - {RESULTS / model}\n" in out for model in CATEGORY_ROWS)
    reports = json.loads(out_json.read_text())["models"]
    rows = {model: tuple(round(v, 2) for v in (*report["categories"].values(), report["overall"]))
            for model, report in reports.items()}
    assert rows == CATEGORY_ROWS


@needs_shared
def test_stc_command_has_eval(capsys):
    """The real `stc` entry point (all commands registered) reaches `stc eval`."""
    assert stc.cli.COMMANDS["eval"] == "stc.cli.eval"
    assert stc.cli.main(["eval", "ovo-bench", "score", str(RESULTS / "LLaVA_OneVision")]) == 0
    assert "RT 64.02 | BT 43.71 | FAR 50.50 | Overall 52.74" in capsys.readouterr().out


def test_multiple_choice_prompt_wording():
    prompt = multiple_choice_prompt("Q?", ["x", "y"])
    assert prompt.startswith("\nQuestion: Q?\nOptions:\nA. x; B. y;\n\n")
    assert "(e.g., A, B, C). \nDo not include any additional text or explanation in your response.\n" in prompt
