"""Bad command lines: one line on stderr, exit code 2, no traceback, before any model is loaded."""

import subprocess
import sys

import cv2
import decord
import numpy as np
import pytest
import torch

from stc.cli import build_parser, main, stc_config_from_args
from stc.config import STCConfig
from stc.cli.options import byte_size, check_device
from stc.cli.run import synthetic_stream
from stc.integrations.video import VideoError, sample_video

EVAL_RUN = ["--model", "m", "--anno", "a.json", "--video-root", "v", "--out", "o"]
COMMANDS = {"run": [], "eval synthetic": [], "eval ovo-bench run": EVAL_RUN, "eval streamingbench run": EVAL_RUN,
            "bench": [], "demo": []}  # command -> the options it needs besides


def refusal(capsys, argv: list[str]) -> str:
    """The one stderr line of a command line that is refused with exit code 2."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.endswith("\n"), err
    return err.rstrip("\n")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_cuda_without_a_gpu(command, no_cuda, capsys):
    assert refusal(capsys, [*command.split(), *COMMANDS[command], "--device", "cuda"]) == (
        f"stc {command}: error: --device cuda: CUDA is not available here (torch {torch.__version__}); use --device cpu")


@pytest.mark.parametrize("device", ["foo", "gpu", "cuda:x", "CUDA", "cpu:0"])
def test_misspelt_devices_are_refused(device, capsys):
    assert refusal(capsys, ["run", "--device", device]) == f"stc run: error: --device must be cpu, cuda or cuda:N, got {device!r}"


def test_devices_are_checked_against_the_gpus_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for device in ("cpu", "cuda", "cuda:0", "cuda:1"):
        check_device(device)
    with pytest.raises(ValueError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        check_device("cuda:2")


def test_the_installed_command_prints_one_line():
    """The real `stc` entry point: no usage block, no traceback."""
    done = subprocess.run([sys.executable, "-m", "stc", "run", "--fps", "0"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr == "stc run: error: argument --fps: must be > 0, got 0\n"


@pytest.mark.parametrize("argv, message", [
    (["run", "--fps", "0"], "stc run: error: argument --fps: must be > 0, got 0"),
    (["run", "--fps", "-2", "--video", "v.mp4", "--question", "q"], "stc run: error: argument --fps: must be > 0, got -2"),
    (["run", "--max-frames", "0"], "stc run: error: argument --max-frames: must be >= 1, got 0"),
    (["demo", "--max-frames", "-1"], "stc demo: error: argument --max-frames: must be >= 1, got -1"),
    (["bench", "--frames", "0"], "stc bench: error: argument --frames: must be >= 1, got 0"),
    (["run", "--max-frames", "two"], "stc run: error: argument --max-frames: invalid int value: 'two'"),
    (["run", "--max-frames", "2"], "stc run: error: --max-frames 2 ends the generated stream at 1 s, before its first "
                                   "question (at 3 s): use --max-frames 4 or more"),
])
def test_bad_numbers_are_refused(argv, message, capsys):
    assert refusal(capsys, argv) == message


def test_max_frames_cuts_the_generated_stream_and_its_questions():
    frames, times, questions, _ = synthetic_stream(0)
    assert len(frames) == 32 and max(q.time for q in questions) > 4
    frames, times, questions, _ = synthetic_stream(0, max_frames=5)
    assert len(frames) == len(times) == 5 and questions and all(q.time <= times[-1] for q in questions)


def test_run_asks_the_demo_s_timed_questions():
    from stc.integrations.demo import TimedQuestion

    questions = synthetic_stream(0)[2]
    assert all(type(q) is TimedQuestion and q.truth for q in questions)  # one TimedQuestion, with the answers


@pytest.mark.parametrize("options, message", [
    (["--no-stc", "--method", "random"], "--no-stc contradicts --method random (--no-stc means --method dense)"),
    (["--no-stc", "--keep-ratio", "0.2"], "--keep-ratio has no effect with --no-stc (dense: no STC option applies)"),
    (["--method", "dense", "--cache-interval", "4"],
     "--cache-interval has no effect with --method dense (dense: no STC option applies)"),
    (["--method", "stc-cacher", "--alpha", "0.2"],
     "--alpha has no effect with --method stc-cacher (it uses only --cache-interval, --update-ratio, --cut-threshold, "
     "--compile, --drift-threshold, --change-threshold, --share-selection, --refresh-tokens)"),
    (["--method", "stc-cacher", "--min-update-ratio", "0.1"],
     "--min-update-ratio has no effect with --method stc-cacher (it uses only --cache-interval, --update-ratio, "
     "--cut-threshold, --compile, --drift-threshold, --change-threshold, --share-selection, --refresh-tokens)"),
    (["--method", "stc-pruner", "--update-ratio", "0.5"], "--update-ratio has no effect with --method stc-pruner "
     "(it uses only --keep-ratio, --history-window, --pruner-scoring, --coverage, --pruner-budget)"),
    (["--method", "stc-pruner", "--cut-threshold", "off"], "--cut-threshold has no effect with --method stc-pruner "
     "(it uses only --keep-ratio, --history-window, --pruner-scoring, --coverage, --pruner-budget)"),
    (["--method", "stc-pruner", "--compile"], "--compile has no effect with --method stc-pruner "
     "(it uses only --keep-ratio, --history-window, --pruner-scoring, --coverage, --pruner-budget)"),
    (["--alpha", "0.2"], "--alpha has no effect with --pruner-scoring gaussian (it weights the dual_anchor score only)"),
    (["--novelty-weight", "0.2"],
     "--novelty-weight has no effect with --pruner-scoring gaussian (it weights the change_novelty score only)"),
    (["--pruner-scoring", "positional", "--motion-radius", "2"],
     "--motion-radius has no effect with --pruner-scoring positional (it sets the motion scorer's neighbourhood only)"),
    (["--pruner-scoring", "motion", "--history-window", "4"],
     "--history-window has no effect with --pruner-scoring motion (it limits the gaussian, gaussian_positional and dual_anchor anchors only)"),
    (["--method", "stc-cacher", "--coverage", "0.1"],
     "--coverage has no effect with --method stc-cacher (it uses only --cache-interval, --update-ratio, --cut-threshold, "
     "--compile, --drift-threshold, --change-threshold, --share-selection, --refresh-tokens)"),
    (["--method", "random", "--history-window", "3"],
     "--history-window has no effect with --method random (it uses only --keep-ratio)"),
])
def test_contradictory_options_are_refused(options, message, capsys):
    assert refusal(capsys, ["run", *options]) == f"stc run: error: {message}"


def test_alpha_is_taken_with_the_dual_anchor_score():
    args = build_parser().parse_args(["run", "--pruner-scoring", "dual_anchor", "--alpha", "0.2"])
    assert stc_config_from_args(args) == STCConfig(pruner_scoring="dual_anchor", alpha=0.2)


@pytest.mark.parametrize("options, config", [
    (["--pruner-scoring", "change_novelty", "--novelty-weight", "0.2", "--coverage", "0.1"],
     STCConfig(pruner_scoring="change_novelty", novelty_weight=0.2, coverage=0.1)),
    (["--pruner-scoring", "motion", "--motion-radius", "2"], STCConfig(pruner_scoring="motion", motion_radius=2)),
    (["--pruner-scoring", "positional"], STCConfig(pruner_scoring="positional")),
    (["--pruner-budget", "adaptive", "--coverage", "0.1"], STCConfig(pruner_budget="adaptive", coverage=0.1)),
    (["--pruner-scoring", "gaussian_positional", "--mix-weight", "0.3"],
     STCConfig(pruner_scoring="gaussian_positional", mix_weight=0.3)),
    (["--pruner-scoring", "cacher_change"], STCConfig(pruner_scoring="cacher_change")),
    (["--pruner-budget", "adaptive", "--budget-floor", "0.5"], STCConfig(pruner_budget="adaptive", budget_floor=0.5)),
])
def test_each_scorer_takes_its_own_knobs(options, config):
    assert stc_config_from_args(build_parser().parse_args(["run", *options])) == config


@pytest.mark.parametrize("options, message", [
    (["--pruner-scoring", "change_novelty", "--novelty-weight", "1.5"], "STCConfig.novelty_weight must be in [0, 1], got 1.5"),
    (["--coverage", "-1"], "STCConfig.coverage must be a finite number >= 0, got -1.0"),
    (["--pruner-scoring", "motion", "--motion-radius", "0"], "argument --motion-radius: must be >= 1, got 0"),
    (["--pruner-budget", "more"], "argument --pruner-budget: invalid choice: 'more' (choose from 'fixed', 'adaptive')"),
    (["--pruner-scoring", "gaussian_positional", "--mix-weight", "2"], "STCConfig.mix_weight must be in [0, 1], got 2.0"),
    (["--pruner-scoring", "positional", "--mix-weight", "0.2"],
     "--mix-weight has no effect with --pruner-scoring positional (it weights the gaussian_positional mix only)"),
    (["--budget-floor", "0.5"], "--budget-floor has no effect without --pruner-budget adaptive (it bounds the adaptive budget only)"),
    (["--pruner-budget", "adaptive", "--budget-floor", "2"], "STCConfig.budget_floor must be in [0, 1], got 2.0"),
])
def test_bad_pruner_knobs_are_one_line(options, message, capsys):
    assert refusal(capsys, ["run", *options]) == f"stc run: error: {message}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_streaming_command_takes_the_memory_options(command, capsys):
    base = [*command.split(), *COMMANDS[command]]
    assert refusal(capsys, [*base, "--kv-bits", "3"]) == (
        f"stc {command}: error: argument --kv-bits: invalid choice: 3 (choose from 16, 8, 4, 2)")
    assert refusal(capsys, [*base, "--kv-scheme", "qvg"]) == (
        f"stc {command}: error: --kv-scheme qvg has no effect with --kv-bits 16 (blocks are not quantized)")
    assert refusal(capsys, [*base, "--memory-budget", "12XB"]) == (
        f"stc {command}: error: argument --memory-budget: expected a size in bytes such as 800000, 512MB or 1.5GiB, "
        "got '12XB'")
    assert refusal(capsys, [*base, "--eviction", "oldest"]) == (
        f"stc {command}: error: --eviction oldest has no effect without --memory-budget")
    assert refusal(capsys, [*base, "--sink-frames", "-1"]) == f"stc {command}: error: --sink-frames must be >= 0, got -1"


def test_byte_sizes():
    assert [byte_size(t) for t in ("800000", "512MB", "1.5GiB", "2e9", "64 kib")] == [
        800000, 512 * 10**6, 3 * 2**29, 2 * 10**9, 65536]


def test_a_budget_too_small_for_the_window_is_one_line_mid_run(capsys):
    """Known only once the first frames are in: exactly one error line (the loading output is
    quiet without -v) and exit code 2."""
    assert main(["run", "--max-frames", "8", "--n-local", "64", "--memory-budget", "100KB"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "stc run: error: memory_budget 100000 bytes cannot hold the sink and the ingestion window (544768 bytes): "
        "raise it, or lower n_local (64) or sink_frames (0)\n") and "Traceback" not in err


@pytest.mark.parametrize("command", ["run", "eval synthetic", "bench"])
def test_a_budget_below_one_token_is_refused_before_the_model_loads(command, monkeypatch, capsys):
    loaded = []
    monkeypatch.setattr("stc.eval.presets.load_model", lambda *a, **k: loaded.append(a))
    err = refusal(capsys, command.split() + ["--memory-budget", "10"])
    assert not loaded and "--memory-budget 10 bytes cannot hold one token of this model's KV (" in err


def test_a_demo_out_that_cannot_be_written_is_named_before_the_model_loads(tmp_path, monkeypatch, capsys):
    loaded = []
    monkeypatch.setattr("stc.eval.presets.load_model", lambda *a, **k: loaded.append(a))
    a_file = tmp_path / "a.mp4"
    a_file.write_text("not a folder")
    demo = ["demo", "--headless", "--max-frames", "2", "--out"]
    assert refusal(capsys, demo + [str(a_file / "x.mp4")]) == (
        f"stc demo: error: cannot write video {a_file / 'x.mp4'}: {a_file} is a file, not a folder")
    assert refusal(capsys, demo + [str(tmp_path)]) == f"stc demo: error: cannot write video {tmp_path}: Is a directory"
    fresh = tmp_path / "new" / "demo.mp4"
    err = refusal(capsys, demo + [str(fresh), "--memory-budget", "10"])
    assert "--memory-budget 10 bytes cannot hold one token of this model's KV (" in err
    assert not loaded and fresh.parent.is_dir() and not fresh.exists()  # the probe leaves no empty mp4


def test_a_malformed_config_and_a_misspelt_preset_are_named(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    err = refusal(capsys, ["run", "--model", str(tmp_path)])
    assert err.startswith(f"stc run: error: {tmp_path / 'config.json'}: not a valid config.json (")
    err = refusal(capsys, ["run", "--model", "llava-ov-tiyn"])
    assert err.startswith("stc run: error: llava-ov-tiyn: neither a checkpoint folder nor a preset (did you mean llava-ov-tiny? "
                          "presets: ") and "qwen2.5-vl-7b" in err


def write_video(path, frames: int = 40, fps: float = 10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 5 * i, np.uint8))
    writer.release()


def truncated(path, length: int):
    """A copy of the video with only its first `length` bytes."""
    cut = path.with_name(f"cut-{length}.avi")
    cut.write_bytes(path.read_bytes()[:length])
    return cut


def test_a_truncated_video_is_used_with_a_warning_naming_the_frames_read(tmp_path, capsys):
    write_video(tmp_path / "clip.avi")
    video = truncated(tmp_path / "clip.avi", (tmp_path / "clip.avi").stat().st_size // 2)
    sampled = sample_video(video, fps=10)  # every frame (decord's count and failures vary with the file)
    read = len(sampled.frames)
    assert 1 <= read < 30 and np.abs(sampled.frames[:, 0, 0, 0] - 5 * np.arange(read)).max() <= 3
    assert capsys.readouterr().err == (f"warning: {video}: only {read} of the 40 frames its header announces can be "
                                       f"decoded (truncated or damaged file?); using those {read}\n")
    assert len(sample_video(tmp_path / "clip.avi", fps=10).frames) == 40
    assert capsys.readouterr().err == ""  # the whole file: no warning


def test_a_video_with_no_decodable_frame_is_refused(tmp_path, capsys):
    write_video(tmp_path / "clip.avi")
    data = (tmp_path / "clip.avi").read_bytes()
    video = truncated(tmp_path / "clip.avi", data.find(b"movi") + 40)  # the header, the start of the first frame
    with pytest.raises(decord.DECORDError):
        decord.VideoReader(str(video))  # decord cannot open it at all
    with pytest.raises(VideoError):
        sample_video(video)
    assert refusal(capsys, ["run", "--video", str(video), "--question", "what is here?"]) == (
        f"stc run: error: cannot decode video {video}: its header announces 40 frames but none can be decoded "
        "(truncated or damaged file?)")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_text("not a video")
    assert refusal(capsys, ["run", "--video", str(garbage), "--question", "what is here?"]) == (
        f"stc run: error: cannot decode video {garbage}: not a video, or a damaged one")


def test_library_notices_and_loading_bars_are_quiet_unless_verbose(monkeypatch, capsys):
    from transformers.utils import logging

    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    # huggingface_hub reads that variable once, at import: after an earlier quiet `main` in this
    # process it is frozen at 1, and enabling the bars below would warn instead of enabling them
    monkeypatch.setattr(sys.modules["huggingface_hub.utils.tqdm"], "HF_HUB_DISABLE_PROGRESS_BARS", None, raising=False)
    logging.set_verbosity_warning()
    logging.enable_progress_bar()
    try:
        assert main(["eval", "compare", "missing-a.json", "missing-b.json"]) == 2
        assert not logging.is_progress_bar_enabled() and logging.get_verbosity() == logging.ERROR
        logging.enable_progress_bar()
        assert main(["eval", "compare", "missing-a.json", "missing-b.json", "-v"]) == 2
        assert logging.is_progress_bar_enabled()
    finally:
        logging.set_verbosity_warning()
        logging.enable_progress_bar()
    capsys.readouterr()


def test_stc_run_marks_answers_by_their_first_word_and_prints_plain_numbers():
    from stc.cli.run import _number, mark

    assert mark("A. red digit 7", "A. red letter T") == "  [right]"
    assert mark("B", "A. red letter T") == "  [wrong]" and mark("3 objects", "3") == "  [right]"
    assert mark("anything", None) == ""
    assert [_number(v) for v in (65536.0, 2.954, 0.0123, 1e-5)] == ["65536", "2.954", "0.0123", "0.00001"]
