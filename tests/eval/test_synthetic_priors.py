"""The time-only guesser (stc.eval.synthetic.priors): the floor a question set must hold."""

import json

from stc.cli import main as stc_main
from stc.eval.records import Query
from stc.eval.synthetic.priors import TimeOnlyGuesser, time_only_report


def question(task, frame, answer, choices=("Yes", "No"), qid="q"):
    return Query(qid=qid, video="v", time=float(frame), prompt="", answer=answer, task=task, kind="yesno",
                 extra={"frame": frame, "choices": list(choices)})


def test_guesser_answers_the_most_frequent_answer_of_the_task_and_frame():
    train = [question("fp_appeared", 2, "No")] * 3 + [question("fp_appeared", 2, "Yes")] + \
            [question("fp_appeared", 9, "Yes")] * 2 + [question("rt_count", 1, "3", ("0", "1", "2", "3", "4"))]
    guesser = TimeOnlyGuesser(train)
    assert guesser.guess(question("fp_appeared", 2, "Yes")) == "No"
    assert guesser.guess(question("fp_appeared", 9, "No")) == "Yes"
    assert guesser.guess(question("fp_appeared", 5, "No")) == "Yes"  # unseen frame: the task's majority (3 of 6 Yes, tie to Yes)
    assert guesser.guess(question("bt_left", 5, "No")) == "Yes"  # unseen task: the first choice
    assert guesser.guess(question("rt_count", 1, "0", ("0", "1", "2", "3", "4"))) == "3"


def test_the_shipped_generator_leaks_the_answer_through_the_question_time():
    """The v1/v2 generator's prior (issue 33): from 300 training episodes the guesser beats
    chance by far on the forward probes of 60 held-out episodes (measured with 4,000 / 1,000:
    71.6% against chance 40.8)."""
    report, chance = time_only_report(300, 0, 60)
    assert report.categories["fp"] > chance["fp"] + 15
    assert report.overall > chance["all"] + 5
    assert set(chance) >= {"rt", "bt", "fp", "all"}


def test_time_only_cli_writes_the_floor_against_chance(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert stc_main(["eval", "synthetic", "--time-only", "--train-episodes", "50", "--n", "5", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["train_episodes"] == 50 and data["episodes"] == 5
    assert abs(data["above_chance"]["all"] - (data["overall"] - data["chance"]["all"])) < 1e-9
    assert "vs chance" in capsys.readouterr().out
    code = stc_main(["eval", "synthetic", "--time-only", "--train-episodes", "0"])
    assert code == 2 and capsys.readouterr().err == "stc eval synthetic: error: --train-episodes must be >= 1, got 0\n"
