"""The shuffled-frames floor (`stc eval synthetic --shuffle-frames`) and the retention above a floor
((acc - floor) / (dense - floor)) in `stc eval compare` and `stc eval synthetic --floor`."""

import json

import numpy as np
import pytest

from stc.cli import main as stc_main
from stc.eval.records import read_queries
from stc.eval.reporting import accuracy_report, above_floor, compare_reports
from stc.eval.runner import FrameSource
from stc.eval.synthetic.episodes import episode_seed, generate_episode, shuffled_order, write_benchmark
from stc.eval.synthetic.scene import SceneConfig
from stc.eval.testbed import train as testbed

shipped = pytest.mark.skipif(not (testbed.TESTBED_DIR / "config.json").exists(), reason="testbed model not trained")
SHORT = SceneConfig(frames=12, version=3)


def report(correct: dict[str, int], total: int = 10):
    outcomes = [(task, k < correct[task], f"{task}-{k}", k % 5) for task in correct for k in range(total)]
    return accuracy_report("synthetic", outcomes, {"rt": ["rt_colour"], "fp": ["fp_count"]}, average="micro",
                           cluster_unit="episode")


def test_above_floor_is_the_share_of_dense_gain_over_the_floor_kept():
    assert above_floor(80.0, 60.0, 40.0) == 50.0
    assert above_floor(80.0, 80.0, 40.0) == 100.0 and above_floor(80.0, 40.0, 40.0) == 0.0
    assert above_floor(40.0, 50.0, 40.0) is None and above_floor(80.0, None, 40.0) is None  # no gain over the floor
    dense, method, floor = report({"rt_colour": 9, "fp_count": 7}), report({"rt_colour": 6, "fp_count": 7}), \
        report({"rt_colour": 3, "fp_count": 7})
    comparison = compare_reports(dense, method, ("dense", "m"), floor)
    data = comparison.to_json()
    assert data["tasks"]["rt_colour"]["above_floor"] == pytest.approx(50.0)  # (60 - 30) / (90 - 30)
    assert data["tasks"]["fp_count"]["above_floor"] is None  # dense no better than the floor there
    assert data["overall"]["floor"] == 50.0 and data["overall"]["above_floor"] == pytest.approx(100 * 15 / 30)
    text = comparison.to_text()
    assert "above floor" in text and "50.0%" in text
    assert "above_floor" not in compare_reports(dense, method).to_json()["overall"]  # no floor, no column


def test_shuffled_videos_show_the_episode_frames_in_a_seeded_order(tmp_path):
    order = shuffled_order(episode_seed("eval", 0), 32)
    assert sorted(order) == list(range(32)) and list(order) != list(range(32))
    assert list(order) == list(shuffled_order(episode_seed("eval", 0), 32))
    assert list(order) != list(shuffled_order(episode_seed("eval", 1), 32))
    plain = read_queries(write_benchmark(tmp_path / "plain", n_episodes=1, config=SHORT))
    shuffled = read_queries(write_benchmark(tmp_path / "shuffled", n_episodes=1, config=SHORT, shuffle_frames=True))
    assert shuffled == plain  # the questions are unchanged
    episode = generate_episode(episode_seed("eval", 0), SHORT)
    frames = np.concatenate([f for f, _ in FrameSource(tmp_path / "shuffled" / episode.video, 1.0).until(11.0)])
    assert np.array_equal(frames, episode.frames[shuffled_order(episode.seed, 12)])


@pytest.mark.parametrize("option, message", [
    (["--shuffle-frames", "--blind"], "--shuffle-frames does not combine with --blind"),
    (["--shuffle-frames", "--method", "oracle"], "--shuffle-frames does not combine with --method oracle (it reads "
                                                 "the scene in its own order)"),
    (["--shuffle-frames", "--time-only"], "--time-only is a run of its own: it does not combine with --shuffle-frames"),
    (["--floor", "f.json", "--no-stc"], "--floor reports a method's accuracy above a floor run; name one (not --no-stc "
                                        "or --method dense)"),
    (["--floor", "missing.json"], "missing.json: no such file"),
])
def test_floor_options_refuse_what_cannot_work_in_one_line(option, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = stc_main(["eval", "synthetic", "--n", "1", "--out", str(tmp_path / "o"), *option])
    assert code == 2 and capsys.readouterr().err == f"stc eval synthetic: error: {message}\n"
    assert not (tmp_path / "o").exists()


@shipped
def test_shuffled_floor_and_a_method_above_it_end_to_end(tmp_path, capsys):
    floor_file, method_file = tmp_path / "floor.json", tmp_path / "m.json"
    common = ["eval", "synthetic", "--n", "1", "--generator", "3", "--out", str(tmp_path), "--no-progress"]
    assert stc_main([*common, "--shuffle-frames", "--no-stc", "--json", str(floor_file)]) == 0
    floor = json.loads(floor_file.read_text())
    assert floor["shuffled_frames"] and floor["generator"] == 3 and floor["method"] == "dense"
    assert (tmp_path / "data-seed0-n1-v3-shuffled" / "queries.jsonl").exists()
    assert len((tmp_path / "dense-seed0-n1-v3-shuffled" / "answers.jsonl").read_text().splitlines()) == floor["questions"]
    assert "== dense (shuffled frames) ==" in capsys.readouterr().out
    assert stc_main([*common, "--method", "uniform", "--keep-ratio", "0.5", "--floor", str(floor_file),
                     "--json", str(method_file)]) == 0
    data = json.loads(method_file.read_text())
    dense, method, low = data["baseline"]["overall"], data["overall"], floor["overall"]
    expected = above_floor(dense, method, low)
    assert data["floor"]["overall"] == low and data["floor"]["above_floor"] == expected
    assert "above floor" in capsys.readouterr().out
    compared = tmp_path / "c.json"
    (tmp_path / "dense.json").write_text(json.dumps(data["baseline"]))
    assert stc_main(["eval", "compare", str(tmp_path / "dense.json"), str(method_file), "--floor", str(floor_file),
                     "--json", str(compared)]) == 0
    assert json.loads(compared.read_text())["overall"]["above_floor"] == expected
