"""The streaming evaluation runner: order, timestamps, prompts, resume, sharding, missing videos."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from stc.eval.ovo_bench import is_correct, load_ovo_bench
from stc.eval.records import Query, read_answers
from stc.eval.runner import ANSWERS, merge_shards, run_queries, run_resumable, shard_videos
from tests.tiny import tiny_llava, tiny_processor


def write_video(path: Path, seconds: int, fps: int = 2, size: int = 32) -> None:
    """A lossless video whose frame i has brightness 20 * i (the frame's own clock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (size, size))
    for i in range(seconds * fps):
        writer.write(np.full((size, size, 3), 20 * i, dtype=np.uint8))
    writer.release()


class FakeSession:
    """Records what the runner feeds and asks; answers with a script."""

    def __init__(self, log, replies=None, fail_after=None):
        self.log, self.replies, self.fail_after = log, replies or {}, fail_after
        self.frames_seen = 0

    def reset(self):
        self.log.append(("reset",))
        self.frames_seen = 0

    def append_frames(self, frames, timestamps):
        clock = [int(round(f.mean() / 20)) for f in frames]  # brightness encodes the frame index
        self.log.append(("frames", [float(t) for t in timestamps], clock))
        self.frames_seen += len(frames)

    def ask(self, prompt, max_new_tokens=16, since=None):
        asks = sum(1 for entry in self.log if entry[0] == "ask")
        if self.fail_after is not None and asks >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.log.append(("ask", prompt, since))
        reply = self.replies.get(prompt, "A")
        text = reply(self) if callable(reply) else reply
        return type("Reply", (), {"text": text, "retrieved": {0: []}})()

    def close(self):
        self.log.append(("close",))


@pytest.fixture
def videos(tmp_path):
    root = tmp_path / "videos"
    write_video(root / "src" / "a.avi", seconds=6)
    write_video(root / "src" / "b.avi", seconds=4)
    return root


def q(qid, video, time, prompt, **extra):
    return Query(qid=qid, video=video, time=time, prompt=prompt, answer="A", task="T", extra=extra)


def test_each_video_streams_once_in_time_order_and_queries_see_only_the_past(videos, tmp_path):
    queries = [q("2", "src/a.avi", 4.0, "late"), q("1", "src/a.avi", 1.0, "early"), q("3", "src/b.avi", 2.0, "b")]
    log = []
    run_queries(queries, lambda: FakeSession(log), videos, tmp_path / "out", fps=2, progress=False)
    a_start, b_start = [i for i, e in enumerate(log) if e == ("reset",)]
    a_log = log[a_start:b_start]
    frames = [t for e in a_log if e[0] == "frames" for t in e[1]]
    assert frames == [i / 2 for i in range(9)]  # 0 .. 4.0 s at 2 fps, each once, in order
    clocks = [c for e in a_log if e[0] == "frames" for c in e[2]]
    assert clocks == list(range(9))  # the decoded frames are the ones at those timestamps
    asked = [e for e in a_log if e[0] == "ask"]
    assert [e[1] for e in asked] == ["early", "late"]
    seen_before_early = [t for e in a_log[: a_log.index(asked[0])] if e[0] == "frames" for t in e[1]]
    assert max(seen_before_early) == 1.0
    answers = read_answers(tmp_path / "out" / ANSWERS)
    assert set(answers) == {"1", "2", "3"}
    assert answers["2"]["time"] == 4.0 and answers["2"]["response"] == "A"


def test_visible_until_and_context_start_reach_the_session(videos, tmp_path):
    queries = [q("1", "src/a.avi", 1.2, "ovo", visible_until=2.0)]
    queries.append(Query(qid="2", video="src/a.avi", time=3.0, prompt="sb60", answer="A", task="T", start=1.0))
    log = []
    run_queries(queries, lambda: FakeSession(log), videos, tmp_path / "out", fps=2, progress=False)
    frames_before_ovo = [t for e in log[: [e[0] for e in log].index("ask")] if e[0] == "frames" for t in e[1]]
    assert max(frames_before_ovo) == 2.0  # OVO: video [0, ceil(realtime)]
    assert ("ask", "sb60", 1.0) in log


def test_proactive_polls_every_second_until_yes(videos, tmp_path):
    query = q("p", "src/a.avi", 2.0, "poll?", poll_times=[2, 3, 4, 5], answer_prompt="say it")
    log = []

    def yes_from_4s(session):
        return "yes" if session.frames_seen >= 9 else "no"  # 9 frames at 2 fps = up to 4.0 s

    run_queries([query], lambda: FakeSession(log, {"poll?": yes_from_4s, "say it": "the output"}), videos,
                tmp_path / "out", fps=2, progress=False)
    assert [e[1] for e in log if e[0] == "ask"] == ["poll?", "poll?", "poll?", "say it"]
    answer = read_answers(tmp_path / "out" / ANSWERS)["p"]
    assert (answer["response"], answer["time"]) == ("the output", 4.0)


def test_missing_video_is_reported_and_skipped(videos, tmp_path, capsys):
    queries = [q("1", "src/none.avi", 1.0, "x"), q("2", "src/b.avi", 1.0, "y")]
    summary = run_queries(queries, lambda: FakeSession([]), videos, tmp_path / "out", fps=2, progress=False)
    assert summary.missing_videos == ["src/none.avi"]
    assert set(read_answers(tmp_path / "out" / ANSWERS)) == {"2"}
    assert "skipping src/none.avi" in capsys.readouterr().err


def test_resume_after_a_kill_loses_nothing_and_recomputes_nothing(videos, tmp_path):
    queries = [q(str(i), "src/a.avi", float(i), f"p{i}") for i in range(5)] + [q("b", "src/b.avi", 1.0, "pb")]
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_queries(queries, lambda: FakeSession([], fail_after=3), videos, out, fps=2, progress=False)
    first = read_answers(out / ANSWERS)
    assert len(first) == 3
    with open(out / ANSWERS, "a") as f:
        f.write('{"qid": "torn')  # a write cut by the kill
    log = []
    summary = run_queries(queries, lambda: FakeSession(log), videos, out, fps=2, progress=False)
    asked = [e[1] for e in log if e[0] == "ask"]
    assert sorted(asked) == sorted(f"p{i}" for i in range(5) if str(i) not in first) + ["pb"]
    assert summary.skipped_answered == 3
    lines = (out / ANSWERS).read_text().splitlines()
    assert len(lines) == 6 and len({json.loads(line)["qid"] for line in lines}) == 6


def test_an_interrupted_run_says_how_to_resume_and_the_rerun_what_it_found(videos, tmp_path, capsys):
    queries = [q(str(i), "src/a.avi", float(i), f"p{i}") for i in range(5)] + [q("b", "src/b.avi", 1.0, "pb")]
    out = tmp_path / "out"
    first_log = []
    assert run_resumable(queries, lambda: FakeSession(first_log, fail_after=3), videos, out, fps=2,
                         progress=False) is None
    assert capsys.readouterr().err == f"interrupted: 3 answers saved in {out}; run the same command again to resume\n"
    assert first_log[-1] == ("close",)
    first = read_answers(out / ANSWERS)
    assert len(first) == 3
    log = []
    summary = run_resumable(queries, lambda: FakeSession(log), videos, out, fps=2, progress=False)
    assert capsys.readouterr().err == f"resuming: found 3 answers in {out}, 3 left\n"
    asked = sorted(e[1] for e in log if e[0] == "ask")
    assert asked == sorted(f"p{i}" for i in range(5) if str(i) not in first) + ["pb"]
    assert summary.answered == 3 and len(read_answers(out / ANSWERS)) == 6


def test_ctrl_c_in_a_benchmark_run_exits_130_and_the_same_command_resumes(eval_cli, monkeypatch, videos, tmp_path, capsys):
    options = ["A. red", "B. green", "C. blue", "D. black"]
    questions = [{"task_type": "Object Recognition", "question": f"q{i}?", "time_stamp": f"00:00:0{i + 1}",
                  "answer": "A", "options": options, "required_ability": "x"} for i in range(3)]
    anno = tmp_path / "questions_real.json"
    anno.write_text(json.dumps([{"video_path": "./src/a.avi", "video_categories": "x", "time": "6",
                                 "questions": questions}]))
    fail_after = [2]
    monkeypatch.setattr("stc.eval.presets.load_model", lambda name, device, dtype: (None, None, "fake"))
    monkeypatch.setattr("stc.cli.eval_run.make_session_factory",
                        lambda model, processor, args: lambda: FakeSession([], fail_after=fail_after[0]))
    out = tmp_path / "out"
    command = ["eval", "streamingbench", "run", "--model", "fake", "--anno", str(anno), "--video-root", str(videos),
               "--out", str(out), "--num-shards", "1", "--no-progress", "--fps", "2"]
    assert eval_cli(command) == 130
    err = capsys.readouterr().err
    assert f"interrupted: 2 answers saved in {out}; run the same command again to resume\n" in err
    assert "\ninterrupted\n" not in err and len(read_answers(out / ANSWERS)) == 2
    fail_after[0] = None
    assert eval_cli(command) == 0
    captured = capsys.readouterr()
    assert f"resuming: found 2 answers in {out}, 1 left\n" in captured.err
    assert "answered 1 queries over 1 videos" in captured.err and "Overall 100.00" in captured.out
    assert len(read_answers(out / ANSWERS)) == 3


@pytest.mark.parametrize("benchmark", ["streamingbench", "ovo-bench"])
def test_a_video_root_without_the_annotations_videos_is_refused_before_loading(eval_cli, benchmark, monkeypatch, tmp_path, capsys):
    options = ["A. red", "B. green", "C. blue", "D. black"]
    if benchmark == "streamingbench":
        questions = [{"task_type": "Object Recognition", "question": "q?", "time_stamp": "00:00:01", "answer": "A",
                      "options": options, "required_ability": "x"}]
        anno_data = [{"video_path": "./src/a.avi", "video_categories": "x", "time": "6", "questions": questions}]
    else:
        anno_data = [{"id": 0, "task": "OCR", "video": "a.mp4", "question": "q?", "options": options, "gt": 0,
                      "realtime": 1.0}]
    anno = tmp_path / "anno.json"
    anno.write_text(json.dumps(anno_data))
    empty = tmp_path / "empty"
    empty.mkdir()
    loaded = []
    monkeypatch.setattr("stc.eval.presets.load_model", lambda *a: loaded.append(a))
    code = eval_cli(["eval", benchmark, "run", "--model", "fake", "--anno", str(anno), "--video-root", str(empty),
                         "--out", str(tmp_path / "out"), "--num-shards", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and not loaded
    assert err.count("\n") == 1 and f"--video-root {empty}: none of the 1 videos the annotation names is there" in err


def test_sharding_splits_videos_and_merges_in_query_order(videos, tmp_path):
    write_video(videos / "src" / "c.avi", seconds=3)
    queries = [q(v, f"src/{v}.avi", 1.0, v) for v in "cab"]
    assert sorted(shard_videos(["a", "b", "c"], 2, 0) + shard_videos(["a", "b", "c"], 2, 1)) == ["a", "b", "c"]
    out = tmp_path / "out"
    for index in (1, 0):
        run_queries(queries, lambda: FakeSession([]), videos, out, fps=2, num_shards=2, shard_index=index, progress=False)
    assert len(list(out.glob("answers.shard-*.jsonl"))) == 2
    merged = merge_shards(queries, out)
    assert [json.loads(line)["qid"] for line in merged.read_text().splitlines()] == ["c", "a", "b"]
    assert not list(out.glob("answers.shard-*.jsonl"))


# -- end to end: the CLI over a tiny checkpoint, OVO-Bench layout ------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("ckpt")
    tiny_llava(dtype=torch.float32).save_pretrained(path)
    tiny_processor().save_pretrained(path)
    return path


def ovo_layout(tmp_path: Path) -> tuple[Path, Path]:
    """A few OVO-Bench style entries (MC, REC, SSR, CRR) over videos laid out as the dataset."""
    root = tmp_path / "src_videos"
    write_video(root / "COIN" / "v1.avi", seconds=6)
    write_video(root / "Ego4D" / "clips" / "v2.avi", seconds=5)
    anno = [
        {"id": 1, "task": "OCR", "video": "COIN/v1.avi", "realtime": 2.5, "question": "what is it ?",
         "options": ["red", "blue"], "answer": "red", "gt": 0},
        {"id": 2, "task": "EPM", "video": "Ego4D/clips/v2.avi", "realtime": 3, "question": "what is in the video ?",
         "options": ["red", "blue", "A"], "answer": "blue", "gt": 1},
        {"id": 3, "task": "REC", "video": "COIN/v1.avi", "activity": "jump", "start_times": [1], "end_times": [2],
         "test_info": [{"realtime": 2, "count": 1}, {"realtime": 5, "count": 1}]},
        {"id": 4, "task": "SSR", "video": "COIN/v1.avi", "tutorial": "t", "all_steps": ["cut"],
         "test_info": [{"realtime": 1, "step": "cut", "type": 1}]},
        {"id": 5, "task": "CRR", "video": "Ego4D/clips/v2.avi", "question": "what colour ?", "answer": "red",
         "ask_time": 1, "clue_time": 3, "test_info": [{"realtime": 1, "type": 0}, {"realtime": 4, "type": 1}]},
        {"id": 6, "task": "OJR", "video": "Ego4D/clips/missing.avi", "realtime": 1, "question": "what ?",
         "options": ["red", "blue"], "answer": "red", "gt": 0},
    ]
    path = tmp_path / "ovo.json"
    path.write_text(json.dumps(anno))
    return path, root


def stc_eval(*args, env=None):
    return subprocess.run([sys.executable, "-m", "stc.eval", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_ovo_bench_run_end_to_end_with_shards_and_missing_video(checkpoint, tmp_path):
    anno, root = ovo_layout(tmp_path)
    common = ["--model", checkpoint, "--anno", anno, "--video-root", root, "--max-new-tokens", "3", "--no-progress"]
    single = stc_eval("ovo-bench", "run", *common, "--out", tmp_path / "one")
    assert single.returncode == 0, single.stderr
    assert "missing or unreadable: Ego4D/clips/missing.avi" in single.stderr
    one = (tmp_path / "one" / ANSWERS).read_text().splitlines()
    assert len(one) == 7  # every query but the one on the missing video
    score = json.loads((tmp_path / "one" / "score.json").read_text())
    queries = {query.qid: query for query in load_ovo_bench(anno)}
    outcomes = {}
    for qid, answer in read_answers(tmp_path / "one" / ANSWERS).items():
        outcomes.setdefault(queries[qid].task, []).append(is_correct(queries[qid], answer["response"]))
    task = {name: 100 * sum(right) / len(right) for name, right in outcomes.items()}
    assert score["tasks"] == pytest.approx(task)
    far = (task["REC"] + task["SSR"] + task["CRR"]) / 3
    assert score["overall"] == pytest.approx((task["OCR"] + task["EPM"] + far) / 3)  # RT, BT, FAR

    procs = [subprocess.Popen([sys.executable, "-m", "stc.eval", "ovo-bench", "run", *map(str, common),
                               "--out", str(tmp_path / "two"), "--num-shards", "2", "--shard-index", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    merge = stc_eval("ovo-bench", "run", *common, "--out", tmp_path / "two")
    assert merge.returncode == 0, merge.stderr
    assert "answered 0 queries" in merge.stderr
    two = (tmp_path / "two" / ANSWERS).read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(l).items() if k != "seconds"} for l in lines]
    assert strip(two) == strip(one)  # 2 processes give the same answers, in the same order


def test_resume_refuses_other_settings(checkpoint, tmp_path):
    anno, root = ovo_layout(tmp_path)
    common = ["--model", checkpoint, "--anno", anno, "--video-root", root, "--out", tmp_path / "o", "--no-progress",
              "--limit", "1"]
    assert stc_eval("ovo-bench", "run", *common).returncode == 0
    again = stc_eval("ovo-bench", "run", *common, "--keep-ratio", "0.5")
    assert again.returncode == 2 and "other settings (stc)" in again.stderr



def test_two_process_launch_merges_deterministically(checkpoint, tmp_path):
    """`torchrun --nproc_per_node 2 -m stc.eval ...` (what accelerate launch does on GPUs)."""
    anno, root = ovo_layout(tmp_path)
    args = ["ovo-bench", "run", "--model", checkpoint, "--anno", anno, "--video-root", root, "--max-new-tokens", "3",
            "--no-progress"]
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "stc.eval", *map(str, args),
         "--out", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert launched.stderr.count("answered ") == 2  # one summary per process
    single = stc_eval(*args, "--out", tmp_path / "single")
    assert single.returncode == 0
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k != "seconds"} for l in p.read_text().splitlines()]
    assert strip(tmp_path / "dist" / ANSWERS) == strip(tmp_path / "single" / ANSWERS)
