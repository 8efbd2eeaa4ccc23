"""StreamingBench loaders (real, omni, sqa, proactive) and the official scoring rules.

Hand-made snippets cover every rule and loader; tests against the real question files run when
../shared is present (no official model outputs are shared, so no leaderboard row to reproduce).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from stc.eval.records import Answer
from stc.eval.reporting import EvalDataError
from stc.eval.streamingbench import (
    AUDIO_TASKS,
    MULTIPLE_CHOICE_PROMPT,
    TASK_CODES,
    detect_subset,
    lettered_options,
    load_streamingbench,
    parse_time_stamp,
    proactive_said_yes,
    score_multiple_choice,
    score_proactive,
    score_streamingbench,
)

SHARED = Path(__file__).resolve().parents[3] / "shared"
SB_DIR = SHARED / "benchmarks" / "streamingbench"
needs_shared = pytest.mark.skipif(not (SB_DIR / "questions_real.json").exists(),
                                  reason="shared benchmark files not present")

OPTIONS = ["A. red", "B. green", "C. blue", "D. black"]


def mc(task_type, time_stamp, answer="A", options=OPTIONS, question="What colour?"):
    return {"task_type": task_type, "question": question, "time_stamp": time_stamp, "answer": answer,
            "options": list(options), "required_ability": "perception"}


REAL = [
    {"time": "[0:00:00 - 0:01:00]", "video_categories": "cooking", "video_path": "./videos/sample_1_real.mp4",
     "questions": [mc("Object Recognition", "00:00:31", "A"), mc("Counting", "00:01:40", "B")]},
    {"time": "[0:00:00 - 0:01:00]", "video_categories": "sports", "video_path": "./videos/sample_2_real.mp4",
     "questions": [mc("Clips Summarize", "00:24", "C", options=["x", "y", "z", "w"])]},
]
OMNI = [
    {"time": "[0:00:00 - 0:01:00]", "video_categories": "talk", "video_path": "./videos/sample_3_omni.mp4",
     "questions": [mc("Emotion Recognition", "00:00:50", "B"), mc("Misleading Context Understanding", "00:00:55", "C"),
                   mc("Scene Understanding", "00:00:58", "D", options=OPTIONS + ["E. extra"])]},
]
SQA = [
    [
        {"time": "[0:01:00 - 0:02:00]", "video_categories": "tennis", "video_path": "./videos/sample_4_sqa.mp4",
         "questions": [mc("Sequential Question Answering", "00:00:36", "A", options=["Wang.", "Fan.", "Xu.", "Ma."],
                          question="Who serves?")]},
        {"time": "[0:02:00 - 0:03:00]", "video_categories": "tennis", "video_path": "./videos/sample_4_sqa.mp4",
         "questions": [mc("Sequential Question Answering", "00:03:02", "C", question="His score?")]},
    ],
    [
        {"time": "[0:00:00 - 0:01:00]", "video_categories": "golf", "video_path": "./videos/sample_5_sqa.mp4",
         "questions": [mc("Sequential Question Answering", "00:00:10", "B", question="Who putts?")]},
    ],
]
PROACTIVE = [
    {"time": "[0:00:00 - 0:00:30]", "video_categories": "basketball", "video_path": "./videos/sample_6_proactive.mp4",
     "questions": [{"task_type": "Proactive Output", "question": 'When the score shows 3, output "3".',
                    "time_stamp": "00:00:20", "ground_truth_time_stamp": "00:00:25", "ground_truth_output": "3",
                    "required_ability": "working memory"}]},
]


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------------------------------------
# Rules


@pytest.mark.parametrize("text, seconds", [
    ("00:03:10", 190), ("01:00:00", 3600), ("00:24", 24), ("00:12450", 12450),
])
def test_parse_time_stamp(text, seconds):
    assert parse_time_stamp(text) == seconds


def test_parse_time_stamp_rejects_garbage():
    with pytest.raises(ValueError):
        parse_time_stamp("soon")


def test_lettered_options():
    assert lettered_options(["x", "y", "z", "w"]) == ["A. x", "B. y", "C. z", "D. w"]
    assert lettered_options(OPTIONS + ["E. extra"]) == OPTIONS
    with pytest.raises(ValueError):
        lettered_options(["A. x", "B. y"])


@pytest.mark.parametrize("response, answer, correct, lenient", [
    ("A", "A", True, True),
    ("A. red", "A", True, True),
    (" A", "A", False, True),          # count.py reads the first character as written
    ("  B\n", "B", False, True),
    ("b", "B", False, False),
    ("The answer is A", "A", False, False),   # only the first character counts
    (["C"], "C", True, True),          # list outputs
    ("   ", "A", False, False),        # a blank reply is an answer, and wrong
    ("", "A", None, None),             # unanswered: left out
    (None, "A", None, None),
])
def test_multiple_choice_rule(response, answer, correct, lenient):
    assert score_multiple_choice(response, answer) is correct
    assert score_multiple_choice(response, answer, lenient=True) is lenient


@pytest.mark.parametrize("reply_time, output, correct", [
    (25, "3", True), (23, "It shows 3", True), (27, "3", True),
    (22, "3", False), (28, "3", False), (25, "three", False), (25, None, False),
])
def test_proactive_rule(reply_time, output, correct):
    assert score_proactive(output, reply_time, 25, "3") is correct


def test_proactive_trigger():
    assert proactive_said_yes(" Yes.") and proactive_said_yes("YES") and not proactive_said_yes("No")


# ----------------------------------------------------------------------------------------------
# Loaders


def test_real_loader(tmp_path):
    path = write(tmp_path / "questions_real.json", REAL)
    queries = load_streamingbench(path)
    assert [q.qid for q in queries] == ["real-0", "real-1", "real-2"]
    first = queries[0]
    assert (first.task, first.answer, first.time, first.start, first.video) == (
        "OP", "A", 31.0, None, "videos/sample_1_real.mp4")
    assert first.prompt == MULTIPLE_CHOICE_PROMPT.format("What colour?", *OPTIONS)
    assert first.prompt.endswith("D. black\n\nThe best option is:")
    assert first.extra["task_type"] == "Object Recognition" and first.extra["subset"] == "real"
    assert "A. x\nB. y\nC. z\nD. w" in queries[2].prompt and queries[2].time == 24.0
    windowed = load_streamingbench(path, context=60)
    assert [q.start for q in windowed] == [0.0, 40.0, 0.0]
    assert [q.task for q in load_streamingbench(path, tasks=["CT"])] == ["CT"]
    with pytest.raises(ValueError):
        load_streamingbench(path, context="recent")


def test_omni_loader_skips_audio_tasks_with_a_warning(tmp_path):
    path = write(tmp_path / "questions_omni.json", OMNI)
    with pytest.warns(UserWarning, match="skipping 2 questions of audio tasks ER, SCU, SD, MA"):
        queries = load_streamingbench(path)
    assert [(q.qid, q.task) for q in queries] == [("omni-1", "MCU")]
    with pytest.warns(UserWarning, match="from the video alone"):
        everything = load_streamingbench(path, include_audio_tasks=True)
    assert [q.task for q in everything] == ["ER", "MCU", "SCU"]
    assert [q.extra["needs_audio"] for q in everything] == [True, False, True]
    assert "E. extra" not in everything[2].prompt   # the official template shows four options
    assert set(AUDIO_TASKS) == {"ER", "SCU", "SD", "MA"}


def test_sqa_loader_puts_earlier_answers_in_the_prompt(tmp_path):
    queries = load_streamingbench(write(tmp_path / "questions_sqa.json", SQA))
    first, second, other_video = queries
    assert [q.qid for q in queries] == ["sqa-0", "sqa-1", "sqa-2"]
    assert "contextual information" not in first.prompt
    assert ("At timestamp 00:00:36, the following question and answer occurred: Question: Who serves?; "
            "Options: A. Wang., B. Fan., C. Xu., D. Ma.; Answer: A; ") in second.prompt
    assert second.prompt.endswith("Question: His score?\n\nOptions:\nA. red\nB. green\nC. blue\nD. black\n\n"
                                  "The best option is:")
    assert "Who serves?" not in other_video.prompt    # context restarts with each video
    assert (second.extra["turn"], other_video.extra["turn"]) == (1, 0)


def test_proactive_loader(tmp_path):
    (query,) = load_streamingbench(write(tmp_path / "questions_proactive.json", PROACTIVE))
    assert (query.qid, query.task, query.kind, query.answer) == ("proactive-0", "PO", "yesno", "3")
    assert (query.start, query.time) == (20.0, 21.0)
    assert query.extra["poll_times"] == list(range(21, 30))   # time_stamp+1 .. ground truth+4
    assert query.extra["ground_truth_time"] == 25
    assert 'output "3". Is it the right time to output "3"? You can only answer yes or no.' in query.prompt
    assert query.extra["answer_prompt"].endswith('Question: When the score shows 3, output "3".\n\nThe answer is:\n')


def test_detect_subset_and_bad_files(tmp_path):
    assert [detect_subset(d) for d in (REAL, OMNI, SQA, PROACTIVE)] == ["real", "omni", "sqa", "proactive"]
    with pytest.raises(EvalDataError, match="not a StreamingBench question file"):
        load_streamingbench(write(tmp_path / "x.json", {"a": 1}))
    with pytest.raises(EvalDataError, match="malformed"):
        load_streamingbench(write(tmp_path / "y.json", [{"video_path": "v", "questions": [{"task_type": "Counting"}]}]))


# ----------------------------------------------------------------------------------------------
# Scoring


def with_responses(data, responses, key="MyModel"):
    """A copy of a question file with responses stored under `key`, in question order."""
    data = json.loads(json.dumps(data))
    entries = [e for video in data for e in video] if data and isinstance(data[0], list) else data
    questions = [q for e in entries for q in e["questions"]]
    for question, response in zip(questions, responses):
        if response is not ...:
            question[key] = response
    return data


def test_score_official_real_output(tmp_path):
    # OP right, CT unanswered (left out), CS wrong
    path = write(tmp_path / "real_output.json", with_responses(REAL, ["A. red", ..., "B"]))
    report = score_streamingbench(path)
    assert report.tasks == {"OP": 100.0, "CS": 0.0}
    assert report.categories == {"Real-Time": 50.0} and report.overall == 50.0
    assert any("1 questions without a 'MyModel' response" in n for n in report.notes)
    assert score_streamingbench(path, model_key="MyModel").tasks == report.tasks


def test_score_official_outputs_of_every_subset(tmp_path):
    omni = write(tmp_path / "omni.json", with_responses(OMNI, ["B", "A", "D"]))
    sqa = write(tmp_path / "sqa.json", with_responses(SQA, ["A", "C", "A"]))
    history = [{"role": "user", "content": "poll", "time": 26}, {"role": "assistant", "content": "3", "time": 26}]
    proactive = write(tmp_path / "proactive.json",
                      with_responses(PROACTIVE, [{"answered": 26, "dialog_history": history}]))
    report = score_streamingbench([omni, sqa, proactive])
    assert report.tasks == {"ER": 100.0, "SCU": 100.0, "MCU": 0.0, "SQA": pytest.approx(200 / 3), "PO": 100.0}
    assert report.categories["Omni-Source"] == 100.0
    assert report.categories["Contextual"] == pytest.approx(100 * 3 / 5)   # share of questions
    assert report.overall == pytest.approx(100 * 5 / 7)


def test_score_official_needs_a_clear_model_key(tmp_path):
    data = with_responses(with_responses(REAL, ["A", "B", "C"], key="m1"), ["A", "B", "D"], key="m2")
    path = write(tmp_path / "two_models.json", data)
    with pytest.raises(EvalDataError, match="'m1', 'm2'.*--model-key"):
        score_streamingbench(path)
    assert score_streamingbench(path, model_key="m2").overall == pytest.approx(200 / 3)
    with pytest.raises(EvalDataError, match="no responses under model key 'm3'"):
        score_streamingbench(path, model_key="m3")


def test_official_outputs_of_several_models_are_not_pooled(tmp_path):
    one = write(tmp_path / "one.json", with_responses(REAL, ["A", "B", "A"], key="m1"))
    two = write(tmp_path / "two.json", with_responses(OMNI, ["B", "A", "D"], key="m2"))
    with pytest.raises(EvalDataError, match=r"responses of 2 models \('m1', 'm2'\); score each model separately"):
        score_streamingbench([one, two])


def write_answers(path: Path, records: list[Answer]) -> Path:
    path.write_text("".join(json.dumps(a.to_json()) + "\n" for a in records))
    return path


def test_score_answers_jsonl(tmp_path):
    real = write(tmp_path / "questions_real.json", REAL)
    proactive = write(tmp_path / "questions_proactive.json", PROACTIVE)
    answers = write_answers(tmp_path / "answers.jsonl", [
        Answer("real-0", " A", "videos/sample_1_real.mp4", 31.0, "OP"),        # wrong as written
        Answer("real-1", "", "videos/sample_1_real.mp4", 100.0, "CT"),          # empty: left out
        Answer("proactive-0", "It is 3", "videos/sample_6_proactive.mp4", 24.0, "PO"),
    ])
    report = score_streamingbench(answers, anno=[real, proactive])
    assert report.tasks == {"OP": 0.0, "PO": 100.0} and report.scoring == "official"
    assert any("1 empty responses" in n for n in report.notes)
    assert any("1 responses start with whitespace and are scored wrong" in n for n in report.notes)
    lenient = score_streamingbench(answers, anno=[real, proactive], lenient=True)
    assert lenient.tasks == {"OP": 100.0, "PO": 100.0} and lenient.scoring == "lenient"
    late = write_answers(tmp_path / "late.jsonl", [Answer("proactive-0", "3", "v", 29.0, "PO")])
    assert score_streamingbench(late, anno=[proactive]).tasks == {"PO": 0.0}
    with pytest.raises(EvalDataError, match="--anno"):
        score_streamingbench(answers)


def test_cli_streamingbench_score(eval_cli, tmp_path, capsys):
    path = write(tmp_path / "real_output.json", with_responses(REAL, ["A", "B", "A"]))
    out_json = tmp_path / "score.json"
    assert eval_cli(["eval", "streamingbench", "score", str(path), "--model-key", "MyModel",
                         "--json", str(out_json)]) == 0
    assert "Real-Time 66.67 | Overall 66.67" in capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert data["tasks"] == {"OP": 100.0, "CS": 0.0, "CT": 100.0} and data["overall"] == pytest.approx(200 / 3)
    assert eval_cli(["eval", "streamingbench", "score", str(tmp_path / "none.json")]) == 2
    assert "none.json: no such file" in capsys.readouterr().err


def test_cli_scores_leading_whitespace_as_count_py_unless_lenient(eval_cli, tmp_path, capsys):
    path = write(tmp_path / "real_output.json", with_responses(REAL, [" A", "B", "A"]))
    out_json = tmp_path / "score.json"
    assert eval_cli(["eval", "streamingbench", "score", str(path), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("StreamingBench - ") and "Overall 33.33" in out
    assert "real_output.json: 1 responses start with whitespace and are scored wrong" in out
    assert json.loads(out_json.read_text())["scoring"] == "official"
    assert eval_cli(["eval", "streamingbench", "score", str(path), "--lenient", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("StreamingBench (lenient scoring, not the official rule) - ") and "Overall 66.67" in out
    data = json.loads(out_json.read_text())
    assert data["scoring"] == "lenient" and data["overall"] == pytest.approx(200 / 3)


# ----------------------------------------------------------------------------------------------
# Real question files


@needs_shared
def test_official_real_output_figures(tmp_path):
    """questions_real.json answered in three ways by turns: the letter, the letter after a space
    (wrong for count.py, right when lenient), another letter."""
    data = json.loads((SB_DIR / "questions_real.json").read_text())
    questions = [q for entry in data for q in entry["questions"]]
    styles = [i % 3 for i in range(len(questions))]
    other = {"A": "B", "B": "C", "C": "D", "D": "A"}
    responses = [[q["answer"], " " + q["answer"], other[q["answer"]]][s] for q, s in zip(questions, styles)]
    path = write(tmp_path / "real_output.json", with_responses(data, responses, key="Model"))
    official, lenient = score_streamingbench(path), score_streamingbench(path, lenient=True)
    assert sum(c["total"] for c in official.counts.values()) == 2500
    assert sum(c["correct"] for c in official.counts.values()) == styles.count(0) == 834
    assert official.overall == pytest.approx(100 * 834 / 2500)
    assert lenient.overall == pytest.approx(100 * (834 + 833) / 2500)
    for task, count in official.counts.items():
        mine = [s for q, s in zip(questions, styles) if TASK_CODES[q["task_type"]] == task]
        assert count == {"correct": mine.count(0), "total": len(mine)}
        assert lenient.counts[task] == {"correct": mine.count(0) + mine.count(1), "total": len(mine)}


@needs_shared
def test_real_question_files():
    real = load_streamingbench(SB_DIR / "questions_real.json")
    assert len(real) == 2500
    assert len({q.video for q in real}) == 499      # sample_316 is absent; five videos have 6 questions
    assert len({q.qid for q in real}) == 2500
    assert {q.task for q in real} == {"OP", "CR", "CS", "ATP", "EU", "TR", "PR", "SU", "ACP", "CT"}
    assert all(q.prompt.endswith("The best option is:") and q.answer in "ABCD" for q in real)
    windowed = load_streamingbench(SB_DIR / "questions_real.json", context=60)
    assert all(q.start == max(0.0, q.time - 60) for q in windowed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        omni = load_streamingbench(SB_DIR / "questions_omni.json", include_audio_tasks=True)
        omni_video_only = load_streamingbench(SB_DIR / "questions_omni.json")
    assert len(omni) == 1500 and len(omni_video_only) == 500
    assert {q.task for q in omni_video_only} == {"ACU", "MCU"}
    sqa = load_streamingbench(SB_DIR / "questions_sqa.json")
    assert len(sqa) == 250 and len({q.video for q in sqa}) == 50
    proactive = load_streamingbench(SB_DIR / "questions_proactive.json")
    assert len(proactive) == 250
    assert all(q.extra["poll_times"][0] == q.start + 1 for q in proactive)
