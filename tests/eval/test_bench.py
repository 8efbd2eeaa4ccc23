"""`stc bench` end to end on the tiny presets, with STC and every peer method."""

import json

import pytest

import cv2
import numpy as np

from stc.cli import main
from stc.config import STCConfig
from stc.eval.bench import measure
from stc.eval.bench import parse_methods, synthetic_frames
from stc.peers import MethodConfig

LLAVA_METHODS = "dense,stc,tome,visionzip,vidcom2,dycoke,timechat,evs,uniform,random"
QWEN_METHODS = "dense,stc,vidcom2,dycoke,timechat,evs,uniform,random"


@pytest.fixture(autouse=True)
def no_sample_video(monkeypatch):
    """As in a fresh clone (no ../shared/videos): `stc bench` without --video generates its frames."""
    monkeypatch.setattr(measure, "SAMPLE_VIDEOS", ())


def test_parse_methods_takes_peer_names_and_overrides():
    specs = parse_methods("dense,stc-cacher:cache_interval=4,timechat:threshold=0.5,evs:keep_ratio=0.25", STCConfig(keep_ratio=0.2))
    assert [s.label for s in specs] == ["dense", "stc-cacher:cache_interval=4", "timechat:threshold=0.5", "evs:keep_ratio=0.25"]
    assert specs[0].config is None and specs[1].config.cache_interval == 4
    assert specs[2].config == MethodConfig("timechat", keep_ratio=0.2, options={"threshold": 0.5})
    assert specs[3].config == MethodConfig("evs", keep_ratio=0.25)
    with pytest.raises(ValueError, match="unknown option 'alpha'"):
        parse_methods("vidcom2:alpha=0.5", STCConfig())
    with pytest.raises(ValueError, match="unknown setting 'window'"):
        parse_methods("stc:window=4", STCConfig())


@pytest.mark.parametrize("item, key", [("stc-pruner:compile=true", "compile"), ("stc-cacher:keep_ratio=0.2", "keep_ratio"),
                                       ("dense:cache_interval=4", "cache_interval"), ("stc:alpha=0.3", "alpha")])
def test_parse_methods_refuses_a_setting_the_method_does_not_read(item, key):
    with pytest.raises(ValueError, match=f"{key} has no effect in method '{item}'"):
        parse_methods(item, STCConfig())
    assert parse_methods("stc:pruner_scoring=dual_anchor:alpha=0.3", STCConfig())[0].config.alpha == 0.3


def test_bench_reports_the_kv_of_quantized_blocks(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "llava-ov-tiny", "--frames", "6", "--repeats", "1", "--max-new-tokens", "1",
                 "--n-local", "4", "--methods", "stc,stc:kv_bits=2", "--json", str(out)]) == 0
    methods = json.loads(out.read_text())["methods"]
    full, quantized = methods["stc"], methods["stc:kv_bits=2"]
    assert full["memory"]["quantized_block_bytes"] == 0 and quantized["memory"]["quantized_block_bytes"] > 0
    assert quantized["kv_bytes_per_frame"] < full["kv_bytes_per_frame"] and quantized["stream_bytes"] < full["stream_bytes"]
    assert json.loads(out.read_text())["settings"]["n_local"] == 4


def test_session_settings_go_to_the_session_per_method():
    specs = parse_methods("stc:kv_bits=2:kv_scheme=qvg:n_local=16,dense:pipeline=true:memory_budget=4000000", STCConfig())
    assert specs[0].session == {"n_local": 16, "kv_bits": 2, "kv_scheme": "qvg"} and specs[0].config == STCConfig()
    assert specs[1].session == {"pipeline": True, "memory_budget": 4000000} and specs[1].config is None
    with pytest.raises(ValueError, match="kv_bits must be an integer in method 'stc:kv_bits=two'"):
        parse_methods("stc:kv_bits=two", STCConfig())
    with pytest.raises(ValueError, match="pipeline must be true or false"):
        parse_methods("dense:pipeline=1", STCConfig())


@pytest.mark.parametrize("model, methods", [("llava-ov-tiny", LLAVA_METHODS), ("qwen2-vl-tiny", QWEN_METHODS),
                                            ("qwen3-vl-tiny", QWEN_METHODS)])
def test_bench_runs_every_method_on_a_tiny_preset(tmp_path, capsys, model, methods):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "--model", model, "--frames", "4", "--repeats", "1", "--max-new-tokens", "2",
                 "--methods", methods, "--json", str(out), "--plot", str(png)])
    assert code == 0
    result = json.loads(out.read_text())
    labels = methods.split(",")
    assert list(result["methods"]) == labels
    for label in labels:
        summary = result["methods"][label]
        assert summary["seconds"]["vit"] > 0  # measured for every method, full ViT time unless it reduces work
        assert summary["seconds"]["answer_decode"] > 0 and summary["decode_ms_per_token"] > 0  # 2 tokens decoded
        assert summary["tokens_per_frame"] <= result["methods"]["dense"]["tokens_per_frame"]
        assert summary["tokens_per_frame_min"] <= summary["tokens_per_frame"] <= summary["tokens_per_frame_max"]
    for label in labels[2:]:  # peers at the default budget, 0.3 of the tokens per frame
        assert result["methods"][label]["tokens_per_frame"] == result["methods"]["stc"]["tokens_per_frame"]
        assert result["methods"][label]["config"]["method"] == label
    for label in set(labels) - {"stc", "tome"}:
        assert result["methods"][label]["vit_recomputed_share"] == 1.0
    per_row = 1 if model.startswith("llava") else 2  # Qwen-VL: one row per 2-frame slice
    dense, stc_run = result["methods"]["dense"], result["methods"]["stc"]
    for fixed in (dense, stc_run):  # a fixed count per frame: fewest = most = the mean
        assert fixed["tokens_per_frame_min"] == fixed["tokens_per_frame"] == fixed["tokens_per_frame_max"]
    assert dense["vit_error_per_frame"] == [0.0] * (4 // per_row) and dense["reference_frames"] == 4 // per_row
    errors = stc_run["vit_error_per_frame"]
    assert len(errors) == 4 // per_row and errors[0] == 0.0 and max(errors) > 0  # reference first, then reuse
    assert stc_run["reference_frames"] < dense["reference_frames"] and stc_run["cut_references"] >= 0
    if "tome" in labels:
        assert result["methods"]["tome"]["vit_recomputed_share"] < 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    captured = capsys.readouterr()
    assert f"wrote {out}\n" in captured.err and f"wrote {png}\n" in captured.err
    table = captured.out
    assert all(label in table for label in labels) and "ViT ms/frame" in table and "LLM tokens/frame (fewest-most)" in table


@pytest.mark.parametrize("count", [1, 4, 9, 40])
def test_generated_fallback_video_has_the_frames_asked_for(count):
    frames, times = synthetic_frames(count)
    assert len(frames) == len(times) == count and times[-1] == count - 1


def test_bench_without_a_sample_video_says_it_generated_one(capsys):
    assert main(["bench", "--model", "llava-ov-tiny", "--frames", "3", "--repeats", "1", "--max-new-tokens", "1",
                 "--methods", "dense"]) == 0
    assert "3 frames from generated synthetic video (no sample video found)" in capsys.readouterr().err


def test_bench_on_a_video_file(tmp_path, capsys):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 2, (64, 48))
    for i in range(8):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    assert main(["bench", "--model", "llava-ov-tiny", "--video", str(video), "--frames", "3", "--repeats", "1",
                 "--max-new-tokens", "1", "--methods", "dense,stc"]) == 0
    assert f"3 frames of {video} at 1 fps" in capsys.readouterr().out


def test_a_method_the_family_cannot_run_is_refused_before_any_work(capsys):
    assert main(["bench", "--model", "qwen3-vl-tiny", "--frames", "3", "--repeats", "1", "--methods", "dense,stc,tome"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("stc bench: error: tome is only available for LLaVA-OneVision")
    assert "warm-up" not in err


@pytest.mark.parametrize("option", [["--method", "random"], ["--no-stc"]])
def test_bench_refuses_the_single_method_options(option, capsys):
    assert main(["bench", "--model", "llava-ov-tiny", *option]) == 2
    err = capsys.readouterr().err
    assert err == "stc bench: error: --method and --no-stc do not apply here: name the methods to compare with " \
                  "--methods (e.g. --methods dense,random)\n"


def test_gpu_bench_commands_parse_and_it_refuses_without_cuda(tmp_path, capsys):
    import torch

    from stc.cli import build_parser
    from stc.cli import gpu_bench
    from stc.eval.bench import parse_methods
    from stc.config import STCConfig

    runs = gpu_bench.commands(tmp_path, frames=16, repeats=3, video=None)
    assert [argv[2] for argv in runs] == list(gpu_bench.PRESETS)
    for argv in runs:
        args = build_parser().parse_args(argv)
        specs = parse_methods(args.methods, STCConfig())
        assert any(s.config is not None and s.config.compile for s in specs)
        assert any(s.session.get("pipeline") for s in specs)
    if not torch.cuda.is_available():
        assert gpu_bench.main(["--out", str(tmp_path)]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_sizes_read_in_units_and_noisy_or_untimeable_stages_are_named():
    from stc.eval.bench.report import notes, size

    assert [size(v) for v in (512, 65536, 63970 * 1024, 1.5 * 2**30)] == ["512 B", "64.0 KiB", "62.5 MiB", "1.50 GiB"]
    stages = dict.fromkeys(measure.STAGES, 0.01)
    quiet = {"seconds": stages, "spread": dict.fromkeys(stages, 0.05)}
    result = {"baseline": "dense", "methods": {"dense": quiet, "stc": {**quiet, "spread": {**quiet["spread"], "vit": 0.4}}}}
    assert not any("repeats disagree" in n for n in notes({**result, "methods": {"dense": quiet}}))
    assert any("repeats disagree by more than 25%" in n and "vit (40%)" in n for n in notes(result))
    result["methods"]["dense"] = {**quiet, "seconds": {**stages, "retrieval": 5e-5}}
    assert "note: retrieval takes under 100 us per stream here: its ratio is timer and call overhead, not the method" in notes(result)
    result["methods"]["dense"]["seconds"]["vit"] = 2e-5
    assert any(n.startswith("note: vit, retrieval take under 100 us per stream here: their ratios are") for n in notes(result))
