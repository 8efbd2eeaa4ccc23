"""The model run with the evidence oracle (`stc eval synthetic --method evidence-oracle`) and the
generator a model folder records (its training.json)."""

import argparse
import json

import numpy as np
import pytest

from stc.cli import main as stc_main
from stc.eval.runner import FrameSource, run_video
from stc.eval.synthetic.benchmark import ground_truth_run, prepare_benchmark, trained_generator
from stc.eval.synthetic.episodes import episode_seed, generate_episode
from stc.eval.synthetic.evidence import episode_evidence
from stc.eval.synthetic.oracle import EVIDENCE_TIER, evidence_priorities
from stc.eval.synthetic.retention import stream_episode
from stc.eval.synthetic.scene import SceneConfig
from stc.eval.testbed import TESTBED_DIR
from stc.methods import method_config
from stc.peers import MethodConfig

shipped = pytest.mark.skipif(not (TESTBED_DIR / "config.json").exists(), reason="testbed model not trained")
SHORT = SceneConfig(frames=12, version=3)


def test_method_config_finds_the_evidence_oracle_only_with_the_scene():
    from stc.eval.synthetic import oracle

    oracle.register()
    assert method_config("evidence-oracle", ground_truth=True) == MethodConfig("evidence-oracle", keep_ratio=0.3)
    with pytest.raises(ValueError, match="needs the scene's ground truth"):
        method_config("evidence-oracle")


class RecordingSession:
    """A StreamingSession that remembers the positions every appended frame kept."""

    def __init__(self, session):
        self.session, self.kept = session, []

    def append_frames(self, frames, timestamps=None):
        report = self.session.append_frames(frames, timestamps=timestamps)
        self.kept += [None] * report.frames if report.kept is None else [p.cpu().tolist() for p in report.kept]
        return report

    def __getattr__(self, name):
        return getattr(self.session, name)


def model_run_masks(model, processor, config, video_root, queries, frame_filter=None):
    """What the benchmark's model runner keeps of every frame of one episode's video, and its replies."""
    from stc.integrations.engine.session import StreamingSession

    answers = []
    with StreamingSession(model, processor, config=config, sample_fps=1.0) as engine:
        session = RecordingSession(engine)
        run_video(session, FrameSource(video_root / queries[0].video, 1.0), queries, answers.append, 4,
                  lambda: None, frame_filter)
    return session.kept, [answer.response for answer in answers]


@shipped
def test_the_model_run_keeps_what_the_er_run_keeps_evidence_first_within_the_budget(tmp_path):
    """Through the benchmark's runner (videos read back, the episode recognised by its first
    frame), the evidence oracle at keep 0.3 keeps 5 of 16 cells a frame, the evidence cells of the
    episode's questions first (all of them, or only evidence when there is more), and exactly the
    masks the ER run (`stream_episode`) reports for the same config; dense is untouched by the hooks."""
    from stc.integrations.loading import load_checkpoint

    model, processor = load_checkpoint(TESTBED_DIR)
    video_root, queries = prepare_benchmark(tmp_path, 0, 1, SHORT)
    episode = generate_episode(episode_seed("eval", 0), SHORT)
    config = MethodConfig("evidence-oracle", keep_ratio=0.3)
    hooks, frame_filter = ground_truth_run(config, video_root, 0, 1, SHORT)
    with hooks:
        kept, _ = model_run_masks(model, processor, config, video_root, queries, frame_filter)
    scores = evidence_priorities(episode, 4)
    assert len(kept) == SHORT.frames and all(len(positions) == 5 for positions in kept)
    evidence_frames = 0
    for frame, positions in enumerate(kept):
        evidence = set(np.flatnonzero(scores[frame] > EVIDENCE_TIER).tolist())
        evidence_frames += bool(evidence)
        assert evidence <= set(positions) if len(evidence) <= 5 else set(positions) <= evidence
    assert evidence_frames >= 3  # the check saw evidence, not only empty frames
    view = stream_episode(model, processor, config, episode, lambda grid: episode_evidence(episode, grid))
    assert kept == [view.kept[frame].tolist() for frame in range(SHORT.frames)]
    plain_masks, plain = model_run_masks(model, processor, None, video_root, queries)
    hooks, frame_filter = ground_truth_run(config, video_root, 0, 1, SHORT)
    with hooks:
        hooked_masks, hooked = model_run_masks(model, processor, None, video_root, queries, frame_filter)
    assert plain_masks == hooked_masks == [None] * SHORT.frames and hooked == plain


@shipped
def test_evidence_oracle_model_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "eo.json"
    code = stc_main(["eval", "synthetic", "--n", "1", "--frames", "12", "--method", "evidence-oracle", "--keep-ratio",
                     "0.3", "--out", str(tmp_path / "w"), "--json", str(out), "--no-progress"])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["method"] == "evidence-oracle" and data["config"]["keep_ratio"] == 0.3
    assert data["generator"] == 2 and data["model_generator"] is None  # the shipped model: no training record
    assert data["questions"] == len(data["outcomes"]) == len(data["baseline"]["outcomes"])
    assert "== evidence-oracle ==" in capsys.readouterr().out


def model_folder(tmp_path, record):
    folder = tmp_path / "model"
    folder.mkdir()
    if record is not None:
        (folder / "training.json").write_text(record)
    return folder


def namespace(model, generator):
    return argparse.Namespace(model=str(model), generator=generator, command_name="stc eval synthetic")


def test_the_generator_defaults_to_the_models_and_another_one_warns(tmp_path, capsys):
    from stc.cli.eval_synthetic import choose_generator

    v3 = model_folder(tmp_path, json.dumps({"generator": 3, "tokens_per_frame": 36}))
    assert trained_generator(v3) == 3 and trained_generator(TESTBED_DIR) is None
    args = namespace(v3, None)
    assert choose_generator(args) == 3 and args.generator == 3
    assert capsys.readouterr().err == ""
    args = namespace(v3, 2)
    assert choose_generator(args) == 3 and args.generator == 2  # given: kept, with a warning
    err = capsys.readouterr().err
    assert err.startswith("stc eval synthetic: warning: --generator 2, but ") and "generator 3" in err
    assert err.count("\n") == 1
    shipped_args = argparse.Namespace(model=None, generator=None, command_name="stc eval synthetic")
    assert choose_generator(shipped_args) is None and shipped_args.generator == 2  # the shipped model: unchanged


def test_the_time_only_run_reads_the_models_generator(tmp_path):
    v3 = model_folder(tmp_path, json.dumps({"generator": 3}))
    out = tmp_path / "t.json"
    code = stc_main(["eval", "synthetic", "--time-only", "--model", str(v3), "--n", "2", "--train-episodes", "5",
                     "--json", str(out)])
    assert code == 0 and json.loads(out.read_text())["generator"] == 3


@pytest.mark.parametrize("record", ["{}", "not json", json.dumps({"generator": 7})])
def test_a_bad_training_record_is_refused_in_one_line(record, tmp_path, capsys):
    folder = model_folder(tmp_path, record)
    code = stc_main(["eval", "synthetic", "--time-only", "--model", str(folder), "--n", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("stc eval synthetic: error: ") and "no training record" in err
    assert err.count("\n") == 1
