"""`stc eval synthetic --method oracle` (the scene's ground truth on the token grid) and `--frames`."""

import json

import numpy as np
import pytest
import torch

from stc.cli import main as stc_main
from stc.eval.testbed import train as testbed
from stc.eval.records import read_queries
from stc.eval.runner import FrameSource
from stc.eval.synthetic.episodes import episode_seed, generate_episode, write_benchmark
from stc.eval.synthetic.benchmark import blank, frames_tag, kept_on_objects
from stc.eval.synthetic.scene import SceneConfig
from stc.eval.synthetic.truth import EpisodeTruth, StreamedTruth, on_objects, square_grid
from stc.peers import MethodConfig

shipped = pytest.mark.skipif(not (testbed.TESTBED_DIR / "config.json").exists(), reason="testbed model not trained")
SHORT = SceneConfig(frames=12)


def test_object_cells_follow_cell_labels_and_need_a_square_grid():
    episode = generate_episode(episode_seed("eval", 0), render=False)
    for t in (0, 10, 20):
        for grid in (4, 8):
            expected = testbed.cell_labels(episode.states[t], 96, grid)[:, 0] > 0
            assert torch.equal(on_objects(episode.states[t], 96, grid), expected)
            assert torch.equal(EpisodeTruth(episode)(0, t, grid * grid), expected)
    assert not EpisodeTruth(episode)(0, 0, 16).any()  # frame 0 is empty
    assert any(EpisodeTruth(episode)(0, t, 64).any() for t in range(32))
    with pytest.raises(ValueError, match="--method oracle needs a square grid.*gave 17"):
        EpisodeTruth(episode)(0, 1, 17)
    with pytest.raises(ValueError, match="frame 32 of an episode of 32 frames"):
        EpisodeTruth(episode)(0, 32, 16)
    assert square_grid(64, "x") == 8 and square_grid(1, "x") == 1
    with pytest.raises(ValueError, match="x needs a square grid.*gave 0"):
        square_grid(0, "x")


def test_streamed_truth_follows_the_episode_the_runner_streams(tmp_path):
    write_benchmark(tmp_path, n_episodes=2, first_index=3, config=SHORT)
    truth = StreamedTruth(tmp_path, 3, 2, SHORT, then=blank)
    for index in (4, 3, 4):  # any order, as a resumed run may stream them
        episode = generate_episode(episode_seed("eval", index), SHORT, render=False)
        source = FrameSource(tmp_path / episode.video, 1.0, chunk=5)  # chunks start mid-episode too
        t = 0
        for frames, _ in source.until(11.0):
            assert (truth(frames) == 128).all()  # then the frames go through `then`
            for _ in frames:
                assert torch.equal(truth.cells(0, t, 16), on_objects(episode.states[t], 96, 4))
                t += 1
        assert t == 12
    with pytest.raises(RuntimeError, match="no episode's first frame"):
        StreamedTruth(tmp_path, 3, 2, SHORT)(np.zeros((1, 96, 96, 3), dtype=np.uint8))


def test_frames_name_only_the_folders_of_other_lengths():
    assert frames_tag(None) == frames_tag(SceneConfig()) == ""  # default runs keep their folders
    assert frames_tag(SceneConfig(frames=300)) == "-frames300"


@pytest.mark.parametrize("frames", ["9", "0", "-32"])
def test_eval_synthetic_refuses_too_short_episodes(frames, tmp_path, capsys):
    code = stc_main(["eval", "synthetic", "--frames", frames, "--n", "1", "--out", str(tmp_path / "o"), "--no-stc"])
    err = capsys.readouterr().err
    assert code == 2 and err == f"stc eval synthetic: error: --frames must be >= 10 (twice an object's shortest stay on screen), got {frames}\n"
    assert not (tmp_path / "o").exists()


@shipped
def test_eval_synthetic_runs_episodes_of_another_length(tmp_path):
    out = tmp_path / "s.json"
    code = stc_main(["eval", "synthetic", "--frames", "12", "--n", "1", "--out", str(tmp_path), "--no-stc",
                     "--json", str(out), "--no-progress"])
    assert code == 0
    queries = read_queries(tmp_path / "data-seed0-n1-frames12" / "queries.jsonl")
    assert queries and max(q.time for q in queries) <= 11
    assert queries == generate_episode(episode_seed("eval", 0), SHORT, render=False).queries
    answers = (tmp_path / "dense-seed0-n1-frames12" / "answers.jsonl").read_text().splitlines()
    data = json.loads(out.read_text())
    assert len(answers) == len(queries) == data["questions"] and data["frames"] == 12


@shipped
def test_eval_synthetic_oracle_end_to_end(tmp_path):
    out = tmp_path / "s.json"
    code = stc_main(["eval", "synthetic", "--method", "oracle", "--keep-ratio", "0.3", "--n", "2", "--out",
                     str(tmp_path), "--json", str(out), "--no-progress"])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["method"] == "oracle" and data["config"]["keep_ratio"] == 0.3
    assert 0 < data["overall"] <= 100 and data["retained"] is not None
    answers = (tmp_path / "oracle-k0.3-seed0-seed0-n2" / "answers.jsonl").read_text().splitlines()
    assert len(answers) == data["questions"] > 10


@shipped
def test_the_oracle_keeps_the_tokens_on_objects():
    """Streamed through the engine with each episode's ground truth: at 2 tokens a frame the
    oracle's kept tokens lie on objects far more often than the object cells' share (measured:
    81% against 16% on two episodes); random tokens stay near that share."""
    from stc.integrations.loading import load_checkpoint

    model, processor = load_checkpoint(testbed.TESTBED_DIR)
    oracle = kept_on_objects(model, processor, MethodConfig("oracle", keep_ratio=0.1), 0, 1, progress=False)
    assert oracle["kept_tokens"] == 32 * 2
    assert oracle["kept_share"] > 3 * oracle["object_cells_share"]
