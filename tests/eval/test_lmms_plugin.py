"""The lmms-eval plugin (stc.eval.lmms_plugin), offline: model args, the torchvision refusal, the
registry, each request type on a tiny random-weight model of each family, a full
`simple_evaluate` on the local demo task, and the multi-round stream's frame accounting.

Tests that need lmms-eval skip without it (it is an extra: `.ci/run` installs it in its own stage)."""

from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stc.eval.lmms_plugin.demo_task import square_frames, write_demo_task, write_video
from stc.eval.lmms_plugin.options import ModelArgError, parse_model_args

TINY = {  # model id -> (tiny preset, family row in tests/families.py)
    "stc_llava_onevision": ("llava-ov-tiny", "llava_onevision"),
    "stc_qwen2_5_vl": ("qwen2.5-vl-tiny", "qwen2_5_vl"),
    "stc_qwen3_vl": ("qwen3-vl-tiny", "qwen3_vl"),
    "stc_qwen3_5": ("qwen3.5-tiny", "qwen3_5"),
}
QUESTION = "what colour is the square ?"
NEW_TOKENS = 6


@pytest.fixture(autouse=True)
def offline_caches(tmp_path_factory, monkeypatch):
    """No hub access and temporary caches, as in CI."""
    home = tmp_path_factory.getbasetemp() / "hf-home"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    if "datasets" in sys.modules:  # datasets reads its cache folder once, at import
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_DATASETS_CACHE", home / "datasets")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_demo_task(tmp_path_factory.mktemp("lmms-task"), videos=2, stream_docs=1)


@pytest.fixture(scope="module")
def one_fps_video(tmp_path_factory):
    """8 frames at 1 fps: the Qwen rules then sample every frame, 1 s apart."""
    path = tmp_path_factory.mktemp("video") / "one_fps.mp4"
    write_video(path, square_frames(["red", "blue"], 4, 1.0, seed=3), 1.0)
    return str(path)


# -- model args (no lmms-eval needed) -------------------------------------------------------------


def test_model_args_reach_the_method_and_the_engine():
    options = parse_model_args({"pretrained": "qwen2.5-vl-tiny", "method": "stc", "keep_ratio": "0.3",
                                "cache_interval": 2, "n_local": 4000, "topk": 8, "kv_bits": 4,
                                "memory_budget": 10**6, "batch_size": 1}, "stc_qwen2_5_vl")
    config = options.method_config()
    assert config.keep_ratio == 0.3 and config.cache_interval == 2
    assert options.session_knobs == {"n_local": 4000, "topk": 8, "kv_bits": 4, "memory_budget": 10**6}
    assert parse_model_args({"pretrained": "x", "method": "dense"}, "stc_qwen2_5_vl").method_config() is None
    assert parse_model_args({"pretrained": "x", "max_frames_num": 16}, "m").max_num_frames == 16  # llava's name


def test_every_stc_knob_is_a_model_arg():
    from dataclasses import fields

    import stc
    from stc.eval.lmms_plugin.options import STC_KNOBS

    assert set(STC_KNOBS) == {f.name for f in fields(stc.STCConfig)} - {"cacher", "pruner"}
    options = parse_model_args({"pretrained": "x", "method": "stc-cacher", "change_threshold": "0.05",
                                "share_selection": "true", "refresh_tokens": False}, "stc_qwen2_5_vl")
    config = options.method_config()
    assert config.change_threshold == 0.05 and config.share_selection is True and config.refresh_tokens is False


@pytest.mark.parametrize("args, message", [
    ({"pretrained": "x", "share_selection": "yes"}, "share_selection must be true or false"),
    ({"pretrained": "x", "keep_raito": 0.3}, "unknown argument(s) keep_raito"),
    ({"pretrained": "x", "method": "fastest"}, "unknown method 'fastest'"),
    ({"pretrained": "x", "keep_ratio": 1.5}, "keep_ratio"),
    ({"pretrained": "x", "cache_interval": 2.5}, "cache_interval must be int"),
    ({"pretrained": "x", "batch_size": 4}, "batch_size must be 1"),
    ({"method": "stc"}, "needs pretrained="),
    ({"pretrained": "x", "method": "dense", "keep_ratio": 0.5}, "keep_ratio=0.5 has no effect with method=dense"),
    ({"pretrained": "x", "method": "stc-pruner", "cache_interval": 4}, "cache_interval=4 has no effect"),
])
def test_bad_model_args_are_named(args, message):
    with pytest.raises(ModelArgError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_model_args(args, "stc_qwen2_5_vl")


# -- a torchvision that does not import (no lmms-eval needed) -------------------------------------


def _write_broken_torchvision(folder):
    """A torchvision package that fails at import as a build for another torch does."""
    (folder / "torchvision").mkdir()
    (folder / "torchvision" / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    (folder / "torchvision-0.28.0.dist-info").mkdir()
    (folder / "torchvision-0.28.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")


@pytest.fixture
def broken_torchvision(tmp_path, monkeypatch):
    importlib.import_module("stc.integrations.compat")  # transformers, imported first, must not see it
    _write_broken_torchvision(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    importlib.invalidate_caches()


def test_torchvision_problem_names_a_broken_build(broken_torchvision):
    from stc.integrations.compat import torchvision_problem

    problem = torchvision_problem()
    assert "torchvision 0.28.0" in problem and "operator torchvision::nms does not exist" in problem
    assert "\n" not in problem and "pip uninstall torchvision" in problem


def test_torchvision_problem_is_none_when_it_imports_or_is_absent(tmp_path, monkeypatch):
    from stc.integrations.compat import torchvision_problem  # before the fake: transformers must not see it

    if importlib.util.find_spec("torchvision") is None:
        assert torchvision_problem() is None
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    importlib.invalidate_caches()
    if importlib.util.find_spec("torchvision").origin.startswith(str(tmp_path)):
        assert torchvision_problem() is None


@pytest.mark.parametrize("model", ["llava-ov-tiny", "testbed"])
def test_stc_refuses_a_broken_torchvision_in_one_line(tmp_path, model):
    """`stc run` with a preset or the shipped checkpoint: one line and exit 2, where transformers
    gave a traceback ("Could not import module ..."). In a subprocess: transformers remembers
    that torchvision is installed, so the broken one must not be seen by this test process."""
    import os
    import subprocess

    from stc.eval.testbed import TESTBED_DIR

    _write_broken_torchvision(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    path = str(TESTBED_DIR) if model == "testbed" else model
    done = subprocess.run([sys.executable, "-m", "stc", "run", "--model", path], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("stc run: error: torchvision 0.28.0 is installed but does not import")


# -- the registry ---------------------------------------------------------------------------------


def test_registry_returns_the_stc_classes_by_id():
    pytest.importorskip("lmms_eval")
    from lmms_eval.models import AVAILABLE_CHAT_TEMPLATE_MODELS, AVAILABLE_SIMPLE_MODELS, get_model

    from stc.eval.lmms_plugin import models
    from stc.eval.lmms_plugin.registration import MODELS

    for model_id, name in MODELS.items():
        assert model_id not in AVAILABLE_SIMPLE_MODELS and model_id not in AVAILABLE_CHAT_TEMPLATE_MODELS
        assert get_model(model_id) is getattr(models, name + "Chat")
        assert get_model(model_id, force_simple=True) is getattr(models, name)
        assert get_model(model_id).model_id == model_id and not get_model(model_id).is_simple
    assert set(TINY) <= set(MODELS)


# -- requests on tiny models ----------------------------------------------------------------------


def _instance(request_type, arguments, doc_id=0, task="t"):
    from lmms_eval.api.instance import Instance

    return Instance(request_type=request_type, arguments=arguments, idx=0,
                    metadata={"task": task, "doc_id": doc_id, "repeats": 1})


def _plugin(model_id, chat=False, **model_args):
    from lmms_eval.models import get_model

    preset = TINY[model_id][0]
    return get_model(model_id, force_simple=not chat)(pretrained=preset, dtype="float32", max_num_frames=8, **model_args)


def _user_turn(video, text):
    return [{"role": "user", "content": [{"type": "video", "url": video}, {"type": "text", "text": text}]}]


GEN = {"max_new_tokens": NEW_TOKENS, "temperature": 0, "do_sample": False, "until": ["\n\n"]}


@pytest.mark.parametrize("model_id", list(TINY))
def test_offline_requests_answer_and_dense_is_the_unpatched_model(model_id, one_fps_video):
    """generate_until through the simple and the chat class; method=dense gives exactly the
    tokens of a model stc never touched, on the same inputs."""
    pytest.importorskip("lmms_eval")
    from stc.api import is_patched
    from stc.eval.lmms_plugin.inputs import load_frames, video_inputs
    from stc.eval.presets import load_model

    docs = {"t": {"test": [{"video": one_fps_video}]}}
    visual = lambda doc: [doc["video"]]  # noqa: E731
    simple = _instance("generate_until", (QUESTION, dict(GEN), visual, 0, "t", "test"))
    chat = _instance("generate_until", (QUESTION, lambda doc: _user_turn(doc["video"], QUESTION), dict(GEN), 0, "t", "test"))
    answers = {}
    for method, knobs in (("dense", {}), ("stc", {"keep_ratio": 0.5})):
        for is_chat, request in ((False, simple), (True, chat)):
            lm = _plugin(model_id, chat=is_chat, method=method, **knobs)
            lm.task_dict = docs
            answers[method, is_chat] = lm.generate_until([request])[0]
            assert not is_patched(lm.model)  # stc patches for the call only
    assert all(isinstance(a, str) for a in answers.values())
    assert answers["dense", False] == answers["dense", True] and answers["stc", False] == answers["stc", True]

    reference, processor, _ = load_model(TINY[model_id][0], "cpu", torch.float32)  # same seed, never patched
    frames, times = load_frames(one_fps_video, reference.config.model_type, 8, None)
    inputs = video_inputs(reference, processor, frames, times, QUESTION, None)
    with torch.inference_mode():
        expected = reference.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    dense = _plugin(model_id, method="dense")
    text, tokens = dense.answer(one_fps_video, QUESTION, dict(GEN))
    assert tokens == expected.tolist() and len(tokens) == NEW_TOKENS
    assert text == processor.tokenizer.decode(tokens, skip_special_tokens=True).strip() == answers["dense", False]


@pytest.mark.parametrize("model_id", list(TINY))
def test_dense_inputs_match_the_hand_laid_video_prompt(model_id, one_fps_video):
    """Every family's prompt is laid out as in tests/families.py (written by hand from the
    processors), on a 1-fps video whose every frame is sampled."""
    pytest.importorskip("lmms_eval")
    from stc.api import adapter_for
    from stc.eval.lmms_plugin.inputs import load_frames
    from stc.eval.presets import load_model
    from stc.integrations.engine.session import PromptTemplate
    from tests.families import FAMILIES

    reference, processor, _ = load_model(TINY[model_id][0], "cpu", torch.float32)
    adapter = adapter_for(reference)
    frames, times = load_frames(one_fps_video, reference.config.model_type, 8, None)
    assert times == [float(i) for i in range(8)]
    laid = SimpleNamespace(processor=processor, adapter=adapter,
                           template=PromptTemplate(processor.tokenizer, adapter.video_placeholder, None))
    expected = FAMILIES[TINY[model_id][1]].offline(reference, laid, frames, QUESTION, NEW_TOKENS)
    assert _plugin(model_id, method="dense").answer(one_fps_video, QUESTION, dict(GEN))[1] == expected


def test_frames_are_sampled_as_the_builtin_models_sample_them():
    from stc.eval.lmms_plugin.inputs import frame_indices

    assert frame_indices("llava_onevision", 100, 25.0, 32, None).tolist() == np.linspace(0, 99, 32, dtype=int).tolist()
    assert frame_indices("qwen2_5_vl", 100, 25.0, 32, None).tolist() == np.linspace(0, 99, 32).round().astype(int).tolist()
    assert len(frame_indices("qwen2_5_vl", 7, 1.0, 32, None)) == 6  # floored to an even count
    assert len(frame_indices("qwen3_vl", 250, 25.0, 32, 2.0)) == 20  # 10 s at 2 fps


# -- a stream per document ------------------------------------------------------------------------


def _count_vit_frames(model, seen: list[int]):
    """A hook on the vision encoder adding the frames of each call to `seen`."""
    inner = model.model
    if hasattr(inner, "vision_tower"):
        return inner.vision_tower.register_forward_pre_hook(lambda m, args, kwargs: seen.append(
            (args[0] if args else kwargs["pixel_values"]).shape[0]), with_kwargs=True)
    temporal = model.config.vision_config.temporal_patch_size
    return inner.visual.register_forward_pre_hook(lambda m, args, kwargs: seen.append(
        int((kwargs.get("grid_thw") if "grid_thw" in kwargs else args[1])[:, 0].sum()) * temporal), with_kwargs=True)


def _demo_utils(task_dir):
    """The demo task's doc_to_* functions (the module lmms-eval loads through `!function`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stc_demo_utils", task_dir / "stc_demo_utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stream_arguments(chat: bool, utils, doc, task="stream"):
    """A multi-round request's arguments as lmms-eval builds them for a simple or a chat class
    (the chat one through doc_to_messages, as lmms-eval's automatic messages do)."""
    from lmms_eval.api.task import ConfigurableMessagesTask

    context = utils.stream_doc_to_text(doc)
    if not chat:
        return (context, dict(GEN), utils.stream_doc_to_visual, utils.stream_doc_to_text, 0, task, "test")

    def doc_to_messages(doc, round_idx=None, previous_output=None, previous_round_info=None):
        if round_idx is None:
            return ConfigurableMessagesTask._build_user_turn(utils.stream_doc_to_visual(doc), utils.stream_doc_to_text(doc))
        visuals, text, terminal, outputs, info = utils.stream_doc_to_text(
            doc, round_idx=round_idx, previous_output=previous_output, previous_round_info=previous_round_info)
        return (None if terminal else ConfigurableMessagesTask._build_user_turn(visuals, text)), terminal, outputs, info

    return (context, doc_to_messages, dict(GEN), 0, task, "test")


@pytest.mark.parametrize("model_id", list(TINY))
def test_multi_round_streams_each_frame_once_and_answers_as_a_fresh_session(model_id, task_dir):
    """Rounds of clips [0, 3 s], [0, 5 s], [0, 8 s] at 1 fps: the ViT sees 8 frames in all, and each
    round's answer and frame blocks (keys and values of every layer) are those of a fresh session
    fed the round's whole clip (in whole blocks: a Qwen slice holds 2 frames, so an odd last frame
    waits for the next round) while the window holds everything; Cacher and Pruner both on. The
    simple and the chat class give the same answers."""
    pytest.importorskip("lmms_eval")
    import json

    from stc.eval.lmms_plugin.streaming import DocumentStream
    from stc.integrations.video import sample_video

    doc = json.loads((task_dir / "stream.json").read_text())[0]
    utils = _demo_utils(task_dir)
    answers = {}
    for chat in (False, True):
        lm = _plugin(model_id, chat=chat, method="stc", keep_ratio=0.5, cache_interval=2)
        lm.task_dict = {"stream": {"test": [doc]}}
        seen: list[int] = []
        hook = _count_vit_frames(lm.model, seen)
        try:
            request = _instance("generate_until_multi_round", _stream_arguments(chat, utils, doc))
            answers[chat] = lm.generate_until_multi_round([request])[0]
        finally:
            hook.remove()
        assert sum(seen) == 8 and lm.restarts == 0
        assert len(answers[chat]) == 3 and all(isinstance(a, str) for a in answers[chat])
    assert answers[False] == answers[True]

    stream = DocumentStream(lm._session, 1.0)  # the same rounds again, to look inside the stream
    held = []  # per round: the stream's blocks (one session per model at a time: fresh ones come after)
    try:
        for i, clip in enumerate(doc["clips"]):
            question = f"Is the {doc['colours'][i]} square visible now? Answer Yes or No."
            assert stream.answer(str(task_dir / clip), question, NEW_TOKENS) == answers[False][i]
            held.append(_blocks(stream.session))
    finally:
        stream.close()
    for i, clip in enumerate(doc["clips"]):
        fresh = lm._session()
        try:
            video = sample_video(str(task_dir / clip), fps=1.0)
            whole = len(video.frames) - len(video.frames) % fresh.frames_per_block
            fresh.append_frames(video.frames[:whole], timestamps=list(video.timestamps[:whole]))
            question = f"Is the {doc['colours'][i]} square visible now? Answer Yes or No."
            assert fresh.ask(question, max_new_tokens=NEW_TOKENS).text == answers[False][i]
            times, tensors = _blocks(fresh)
            assert held[i][0] == times and len(times) == whole // fresh.frames_per_block
            torch.testing.assert_close(held[i][1], tensors, rtol=1e-4, atol=1e-4)
        finally:
            fresh.close()


def _blocks(session):
    """(timestamps, [keys, values] per layer) of the frame blocks a session holds, copied."""
    store, cpu = session.store, torch.device("cpu")
    return list(store.timestamps), [[t.clone() for t in store.fetch(layer, store.ids, cpu)]
                                    for layer in range(session.driver.num_layers)]


# -- a whole lmms-eval run ------------------------------------------------------------------------


def test_simple_evaluate_on_the_demo_task_ends_with_a_score(task_dir):
    """lmms-eval's evaluator over the local YAML tasks and JSON data: a score per task, computed
    from the answers the model gave (recomputed here from the logged samples)."""
    pytest.importorskip("lmms_eval")
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    manager = TaskManager("WARNING", include_path=str(task_dir), model_name="stc_qwen2_5_vl")
    out = simple_evaluate(model="stc_qwen2_5_vl", tasks=["stc_demo", "stc_demo_stream"], task_manager=manager,
                          model_args="pretrained=qwen2.5-vl-tiny,dtype=float32,max_num_frames=8,method=stc,keep_ratio=0.5",
                          verbosity="WARNING", bootstrap_iters=0, log_samples=True)
    assert "method=stc" in out["config"]["model_args"]
    for task in ("stc_demo", "stc_demo_stream"):
        score = out["results"][task]["acc,none"]
        samples = out["samples"][task]
        assert 0.0 <= score <= 1.0 and len(samples) == (2 if task == "stc_demo" else 1)
        recomputed = [s["acc"] for s in samples]
        assert score == pytest.approx(sum(recomputed) / len(recomputed))
    offline = out["samples"]["stc_demo"][0]
    assert offline["acc"] == float(offline["target"] in offline["filtered_resps"][0])
