"""Confidence intervals (cluster bootstrap) and the paired sign-flip test (stc.eval.statistics),
their place in score reports, comparisons, `stc eval compare` and `stc eval synthetic --json`.

Simulated benchmarks with a known true accuracy check that the intervals cover it and shrink as
episodes are added, that the paired test finds a real difference and not a made-up one, and
that everything is reproducible. All fast (seconds)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import stc.cli
from stc.eval.records import Answer
from stc.eval.reporting import Report, accuracy_report, compare_reports
from stc.eval.statistics import (
    Question,
    bootstrap_intervals,
    paired_comparison,
    p_value,
    tabulate,
)

GROUPS = {"rt": ["rt_a", "rt_b"], "bt": ["bt_a"], "fp": ["fp_a"]}
TASKS = [t for tasks in GROUPS.values() for t in tasks]


def simulate(episodes: int, accuracy: float, rng: np.random.Generator, per_episode: int = 10,
             spread: float = 0.0) -> list[Question]:
    """Questions of `episodes` episodes; each episode's own accuracy is drawn around `accuracy`
    (`spread`: how much episodes differ, which makes questions of one episode correlated)."""
    questions = []
    for e in range(episodes):
        p = np.clip(accuracy + spread * rng.standard_normal(), 0.0, 1.0)
        for k in range(per_episode):
            questions.append(Question(f"{e}-{k}", TASKS[rng.integers(len(TASKS))], bool(rng.random() < p), e))
    return questions


def rerun(questions: list[Question], rng: np.random.Generator, flip_right: float, flip_wrong: float = 0.0
          ) -> list[Question]:
    """Another run on the same questions: right answers turn wrong with `flip_right`, wrong ones
    right with `flip_wrong`."""
    out = []
    for q in questions:
        correct = q.correct and rng.random() >= flip_right or (not q.correct and rng.random() < flip_wrong)
        out.append(q._replace(correct=bool(correct)))
    return out


def width(interval) -> float:
    return interval[1] - interval[0]


# ----------------------------------------------------------------------------------------------
# Intervals


def test_interval_contains_the_true_accuracy_and_shrinks_with_more_episodes():
    rng = np.random.default_rng(1)
    widths = {}
    for episodes in (25, 100, 400):
        questions = simulate(episodes, 0.7, rng, spread=0.1)
        interval = bootstrap_intervals(questions, GROUPS, "micro").overall
        assert interval[0] < 70.0 < interval[1]
        widths[episodes] = width(interval)
    # width ~ 1 / sqrt(episodes): each fourfold increase halves it
    assert widths[100] < 0.65 * widths[25] and widths[400] < 0.65 * widths[100]


def test_interval_coverage_is_about_95_percent():
    """Over 200 simulated benchmarks of 100 clustered episodes, the 95% interval covers the true
    accuracy about 95% of the time (binomial sd of the rate: 1.5 points)."""
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(200):
        interval = bootstrap_intervals(simulate(100, 0.75, rng, spread=0.15), GROUPS, "micro", resamples=500).overall
        covered += interval[0] <= 75.0 <= interval[1]
    assert 0.89 <= covered / 200 <= 0.99


def test_independent_questions_match_the_binomial_interval():
    """One question per episode: the bootstrap interval is the textbook binomial one."""
    rng = np.random.default_rng(3)
    questions = simulate(1000, 0.8, rng, per_episode=1)
    accuracy = np.mean([q.correct for q in questions])
    expected = 2 * 1.96 * 100 * np.sqrt(accuracy * (1 - accuracy) / len(questions))
    assert width(bootstrap_intervals(questions, GROUPS, "micro").overall) == pytest.approx(expected, rel=0.12)


def test_clustered_questions_get_wider_intervals_than_independent_ones():
    """When all questions of an episode share one outcome, 1,000 questions carry the information
    of 100 episodes: the interval is ~sqrt(10) times wider than if they were independent."""
    rng = np.random.default_rng(4)
    right = rng.random(100) < 0.7
    clustered = [Question(f"{e}-{k}", "rt_a", bool(right[e]), e) for e in range(100) for k in range(10)]
    independent = [q._replace(cluster=q.qid) for q in clustered]
    ratio = width(bootstrap_intervals(clustered, GROUPS, "micro").overall) / \
        width(bootstrap_intervals(independent, GROUPS, "micro").overall)
    assert 2.5 < ratio < 4.0


def test_category_and_task_intervals_and_macro_average():
    rng = np.random.default_rng(5)
    questions = simulate(100, 0.6, rng)
    for average in ("micro", "macro"):
        report = accuracy_report("B", [(q.task, q.correct, q.qid, q.cluster) for q in questions], GROUPS,
                                 average=average)
        intervals = report.intervals()
        assert set(intervals.categories) == set(GROUPS) and set(intervals.tasks) == set(TASKS)
        for name, value in report.categories.items():
            assert intervals.categories[name][0] <= value <= intervals.categories[name][1]
        assert intervals.overall[0] <= report.overall <= intervals.overall[1]
        assert intervals.clusters == 100 and intervals.questions == 1000


def test_intervals_are_deterministic_and_do_not_depend_on_question_order():
    rng = np.random.default_rng(6)
    questions = simulate(50, 0.7, rng)
    first = bootstrap_intervals(questions, GROUPS, "micro")
    assert bootstrap_intervals(questions, GROUPS, "micro") == first
    shuffled = [questions[i] for i in rng.permutation(len(questions))]
    assert bootstrap_intervals(shuffled, GROUPS, "micro") == first
    assert bootstrap_intervals(questions, GROUPS, "micro", seed=1) != first  # the seed is what fixes it


def test_tabulate_counts_per_cluster_and_task():
    table = tabulate([Question("a", "rt_a", True, 2), Question("b", "rt_a", False, 2), Question("c", "bt_a", True, 1)],
                     ["rt_a", "bt_a"])
    assert table.clusters == [1, 2]
    assert table.correct.tolist() == [[0, 1], [1, 0]] and table.total.tolist() == [[0, 1], [2, 0]]


def test_speed_of_a_full_testbed_run():
    """1,043 questions over 100 episodes, 2,000 resamples: intervals and paired test well under a second."""
    rng = np.random.default_rng(7)
    dense = simulate(100, 0.77, rng, per_episode=10) + simulate(43, 0.77, rng, per_episode=1)[:43]
    dense = [q._replace(qid=f"{i}", cluster=q.cluster % 100) for i, q in enumerate(dense)]
    compressed = rerun(dense, rng, 0.2)
    start = time.perf_counter()
    bootstrap_intervals(dense, GROUPS, "micro")
    paired_comparison(dense, compressed, GROUPS, "micro")
    assert time.perf_counter() - start < 1.0


# ----------------------------------------------------------------------------------------------
# Paired test


def test_clearly_better_run_is_significant():
    rng = np.random.default_rng(8)
    dense = simulate(100, 0.77, rng)
    compressed = rerun(dense, rng, flip_right=0.15)  # loses ~11 points
    paired = paired_comparison(dense, compressed, GROUPS, "micro")
    assert paired.p_value < 0.01 and paired.ci[1] < 0 and paired.ci[0] < paired.difference < paired.ci[1]
    assert paired.retained_ci[0] < paired.retained < paired.retained_ci[1] < 100.0
    assert paired.retained == pytest.approx(100 * paired.b / paired.a)
    assert not paired.exact and paired.p_value == pytest.approx(1 / 2001)  # no random swap reaches it
    reverse = paired_comparison(compressed, dense, GROUPS, "micro")
    assert reverse.difference == pytest.approx(-paired.difference) and reverse.p_value == paired.p_value


def test_identical_runs_give_p_one_and_a_zero_interval():
    questions = simulate(60, 0.7, np.random.default_rng(9))
    paired = paired_comparison(questions, list(questions), GROUPS, "micro")
    assert paired.p_value == 1.0 and paired.difference == 0.0 and paired.ci == [0.0, 0.0]
    assert paired.retained == 100.0 and paired.retained_ci == [100.0, 100.0]


def test_equally_good_runs_are_rarely_called_different():
    """Two independent runs of the same quality (a random relabelling of which is better): the
    test rejects at 5% about 5% of the time, not more."""
    rng = np.random.default_rng(10)
    rejections = []
    for _ in range(100):
        dense = simulate(50, 0.7, rng, per_episode=5, spread=0.1)
        other = rerun(dense, rng, flip_right=0.2, flip_wrong=0.2 * 0.7 / 0.3)  # same expected accuracy
        rejections.append(paired_comparison(dense, other, GROUPS, "micro", resamples=500).p_value < 0.05)
    assert np.mean(rejections) <= 0.12


def test_exact_sign_flip_p_value_by_hand():
    """Three episodes, B one question better in each: of the 8 swaps, only 'none' and 'all' reach
    |difference| = 3 questions, so p = 2/8; with one episode against it p = 1 (|+1| reached by all)."""
    a = [Question(f"{e}-{k}", "rt_a", k == 0, e) for e in range(3) for k in range(2)]
    b = [q._replace(correct=True) for q in a]
    paired = paired_comparison(a, b, GROUPS, "micro")
    assert paired.exact and paired.flips == 8 and paired.p_value == pytest.approx(0.25)
    mixed = [q._replace(correct=q.correct if q.cluster == 2 else True) for q in a]
    mixed[4] = mixed[4]._replace(correct=False)  # episode 2: B loses its right answer
    assert paired_comparison(a, mixed, GROUPS, "micro").p_value == pytest.approx(1.0)


def test_p_value_with_macro_average_uses_the_report_statistic():
    rng = np.random.default_rng(11)
    dense = simulate(80, 0.8, rng)
    worse = rerun(dense, rng, flip_right=0.2)
    paired = paired_comparison(dense, worse, GROUPS, "macro")
    report_a = accuracy_report("B", [(q.task, q.correct) for q in dense], GROUPS, average="macro")
    report_b = accuracy_report("B", [(q.task, q.correct) for q in worse], GROUPS, average="macro")
    assert paired.difference == pytest.approx(report_b.overall - report_a.overall)
    assert paired.p_value < 0.01
    table_a, table_b = tabulate(dense, TASKS), tabulate(worse, TASKS)
    assert p_value(table_a.correct, table_a.correct, table_a.total, TASKS, GROUPS, "macro")[0] == 1.0
    assert p_value(table_a.correct, table_b.correct, table_a.total, TASKS, GROUPS, "macro") == \
        p_value(table_a.correct, table_b.correct, table_a.total, TASKS, GROUPS, "macro")


def test_paired_uses_the_common_questions_and_refuses_different_ones():
    rng = np.random.default_rng(12)
    dense = simulate(20, 0.7, rng)
    paired = paired_comparison(dense, dense[:-10], GROUPS, "micro")
    assert (paired.questions, paired.only_a, paired.only_b, paired.clusters) == (190, 10, 0, 19)
    with pytest.raises(ValueError, match="no question in common"):
        paired_comparison(dense, [q._replace(qid="x" + q.qid) for q in dense], GROUPS, "micro")
    with pytest.raises(ValueError, match="another task or cluster"):
        paired_comparison(dense, [q._replace(cluster=-1) for q in dense], GROUPS, "micro")


# ----------------------------------------------------------------------------------------------
# Reports and comparisons


def report_of(questions: list[Question], unit: str = "episode") -> Report:
    return accuracy_report("synthetic", [(q.task, q.correct, q.qid, q.cluster) for q in questions], GROUPS,
                           average="micro", cluster_unit=unit)


def test_report_text_and_json_carry_intervals_and_outcomes():
    questions = simulate(40, 0.7, np.random.default_rng(13))
    report = report_of(questions)
    text = report.to_text()
    low, high = report.intervals().overall
    assert f"Overall {report.overall:.2f} [{low:.1f}, {high:.1f}]" in report.summary_line()
    assert "95% CI" in text and "bootstrap over 40 episodes (400 questions" in text
    data = json.loads(json.dumps(report.to_json()))
    assert data["ci"]["overall"] == [low, high] and set(data["ci"]["categories"]) == set(GROUPS)
    assert len(data["outcomes"]) == 400 and data["outcomes"][0] == questions[0].to_json()
    again = Report.from_json(data)
    assert again == report and again.to_json() == data
    plain = accuracy_report("B", [(q.task, q.correct) for q in questions], GROUPS, average="micro")
    assert plain.intervals() is None and "ci" not in plain.to_json() and "95% CI" not in plain.to_text()
    assert plain.summary_line().endswith(f"Overall {plain.overall:.2f}")


def test_comparison_with_outcomes_has_paired_test_and_retained_interval():
    rng = np.random.default_rng(14)
    dense = simulate(100, 0.77, rng)
    stc = rerun(dense, rng, flip_right=0.2)
    comparison = compare_reports(report_of(dense), report_of(stc), ("dense", "stc"))
    text = comparison.to_text()
    paired = comparison.paired()[0]
    assert f"retained {paired.retained:.1f}% [" in text and "paired over 100 episodes, 1000 questions" in text
    assert "p = " in text and "significant at 5%" in text and "not significant" not in text
    data = comparison.to_json()
    assert data["paired"]["difference"] == pytest.approx(stc_overall(stc) - stc_overall(dense))
    assert data["paired"]["p_value"] < 0.01 and data["retained_ci"] == paired.retained_ci
    assert data["overall"]["a_ci"][0] < data["overall"]["a"] < data["overall"]["a_ci"][1]
    assert set(data["categories"]["rt"]) >= {"a_ci", "b_ci"}


def stc_overall(questions: list[Question]) -> float:
    return 100.0 * np.mean([q.correct for q in questions])


def test_comparison_without_outcomes_says_so():
    questions = simulate(10, 0.7, np.random.default_rng(15))
    aggregate = Report.from_json({k: v for k, v in report_of(questions).to_json().items() if k != "outcomes"})
    comparison = compare_reports(aggregate, report_of(questions), ("base", "new"))
    assert "note: base has no per-question outcomes" in comparison.to_text()
    assert "paired over" not in comparison.to_text()
    data = comparison.to_json()
    assert data["paired"] is None and data["retained_ci"] is None and "no per-question" in data["statistics_note"]


# ----------------------------------------------------------------------------------------------
# CLI


def test_cli_compare_score_jsons_with_outcomes(eval_cli, tmp_path, capsys):
    rng = np.random.default_rng(16)
    dense = simulate(100, 0.77, rng)
    a, b = tmp_path / "dense.json", tmp_path / "stc.json"
    a.write_text(json.dumps(report_of(dense).to_json()))
    b.write_text(json.dumps(report_of(rerun(dense, rng, flip_right=0.2)).to_json()))
    assert eval_cli(["eval", "compare", str(a), str(b), "--json", str(tmp_path / "cmp.json")]) == 0
    out = capsys.readouterr().out
    assert "paired over 100 episodes" in out and "retained " in out and "95% CI" in out
    data = json.loads((tmp_path / "cmp.json").read_text())
    assert {"difference", "ci", "p_value"} <= set(data["paired"]) and len(data["retained_ci"]) == 2
    assert eval_cli(["eval", "compare", str(a), str(b), "--json", str(tmp_path / "again.json")]) == 0
    assert (tmp_path / "again.json").read_text() == (tmp_path / "cmp.json").read_text()  # reproducible


def write_ovo_annotation(path, videos: int) -> None:
    entries = [{"id": i, "task": "EPM" if i % 2 else "OCR", "video": f"v{i // 4}.mp4", "realtime": 10,
                "question": "Which?", "answer": "x", "options": ["x", "y", "z", "w"], "gt": 0}
               for i in range(4 * videos)]
    path.write_text(json.dumps(entries))


def write_answers(path, responses: dict[str, str]) -> None:
    path.write_text("".join(json.dumps(Answer(qid=qid, response=r, video="v", time=0.0, task="?").to_json()) + "\n"
                            for qid, r in responses.items()))


def test_cli_compare_ovo_bench_answer_sets_pairs_by_video(eval_cli, tmp_path, capsys):
    anno = tmp_path / "ovo_bench_new.json"
    write_ovo_annotation(anno, videos=30)
    rng = np.random.default_rng(17)
    right = rng.random(120) < 0.8
    write_answers(tmp_path / "dense.jsonl", {str(i): "A" if right[i] else "B" for i in range(120)})
    write_answers(tmp_path / "same.jsonl", {str(i): "A" if right[i] else "C" for i in range(120)})
    assert eval_cli(["eval", "compare", str(tmp_path / "dense.jsonl"), str(tmp_path / "same.jsonl"), "--anno",
                     str(anno), "--json", str(tmp_path / "cmp.json")]) == 0
    out = capsys.readouterr().out
    assert "paired over 30 videos, 120 questions: difference +0.00 points" in out and "p = 1.000" in out
    data = json.loads((tmp_path / "cmp.json").read_text())
    assert data["paired"]["p_value"] == 1.0 and data["paired"]["clusters"] == 30


def test_cli_compare_aggregate_report_says_no_interval(eval_cli, tmp_path, capsys):
    anno = tmp_path / "ovo_bench_new.json"
    write_ovo_annotation(anno, videos=3)
    write_answers(tmp_path / "a.jsonl", {str(i): "A" for i in range(12)})
    aggregate = tmp_path / "aggregate.json"
    aggregate.write_text(json.dumps({"tasks": {"OCR": 50.0, "EPM": 50.0}, "categories": {"RT": 50.0, "BT": 50.0},
                                     "overall": 50.0}))
    assert eval_cli(["eval", "compare", str(aggregate), str(tmp_path / "a.jsonl"), "--anno", str(anno)]) == 0
    out = capsys.readouterr().out
    assert "note: aggregate has no per-question outcomes" in out and "no confidence interval or paired test" in out
    assert "p = " not in out


shipped = pytest.mark.skipif(not (__import__("stc.eval.testbed", fromlist=["TESTBED_DIR"]).TESTBED_DIR
                                  / "config.json").exists(), reason="testbed model not present")


@shipped
def test_eval_synthetic_json_has_intervals_paired_test_model_and_tokens(tmp_path, capsys):
    from stc.eval.testbed import TESTBED_DIR

    out = tmp_path / "s.json"
    assert stc.cli.main(["eval", "synthetic", "--n", "1", "--out", str(tmp_path), "--json", str(out),
                         "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "95% CI" in text and "paired over 1 episode," in text and "retained " in text and "too narrow" in text
    data = json.loads(out.read_text())
    assert data["model"] == str(TESTBED_DIR.resolve()) and data["tokens_per_frame"] == 16
    assert len(data["ci"]["overall"]) == 2 and len(data["baseline"]["ci"]["overall"]) == 2
    assert {"difference", "ci", "p_value"} <= set(data["paired"]) and len(data["retained_ci"]) == 2
    assert len(data["outcomes"]) == data["questions"] and {o["cluster"] for o in data["outcomes"]} == {
        o["cluster"] for o in data["baseline"]["outcomes"]}


def test_cli_compare_streamingbench_answer_sets(eval_cli, tmp_path, capsys):
    """StreamingBench answers are paired by qid and clustered by video, with the official rules:
    an empty response is left out of both the score and the outcomes."""
    from tests.eval.test_streamingbench import PROACTIVE, REAL

    real, proactive = tmp_path / "questions_real.json", tmp_path / "questions_proactive.json"
    real.write_text(json.dumps(REAL))
    proactive.write_text(json.dumps(PROACTIVE))

    def answers(name, first):
        path = tmp_path / name
        path.write_text("".join(json.dumps(a.to_json()) + "\n" for a in [
            Answer("real-0", first, "videos/sample_1_real.mp4", 31.0, "OP"),
            Answer("real-1", "", "videos/sample_1_real.mp4", 100.0, "CT"),
            Answer("real-2", "C", "videos/sample_2_real.mp4", 24.0, "CS"),
            Answer("proactive-0", "It is 3", "videos/sample_6_proactive.mp4", 24.0, "PO")]))
        return path

    a, b = answers("a.jsonl", "A"), answers("b.jsonl", "B")
    assert eval_cli(["eval", "compare", str(a), str(b), "--anno", str(real), "--anno", str(proactive),
                     "--json", str(tmp_path / "cmp.json")]) == 0
    assert "paired over 3 videos, 3 questions: difference -33.33 points" in capsys.readouterr().out
    data = json.loads((tmp_path / "cmp.json").read_text())
    assert data["paired"]["clusters"] == 3 and data["paired"]["p_value"] == 1.0  # one differing video: p = 1
