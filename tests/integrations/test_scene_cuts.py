"""Scene-cut-aware reference refresh (STCConfig.cut_threshold): the plan, and both families."""

import warnings

import numpy as np
import pytest
import torch

import stc
from stc.cacher import StreamCache, plan_frames
from stc.integrations.engine.session import StreamingSession
from tests.tiny import random_frames, tiny_llava, tiny_processor, tiny_qwen, tiny_qwen_processor


def noisy(frame: np.ndarray, seed: int) -> np.ndarray:
    """The same picture with a little sensor noise: no cut."""
    noise = np.random.default_rng(seed).integers(-8, 9, frame.shape)
    return np.clip(frame.astype(int) + noise, 0, 255).astype(np.uint8)


def two_scenes(size: int, first: int, second: int) -> np.ndarray:
    a, b = random_frames(1, size=size, seed=1)[0], random_frames(1, size=size, seed=2)[0]
    return np.stack([noisy(a, i) for i in range(first)] + [noisy(b, 10 + i) for i in range(second)])


def test_a_frame_below_the_threshold_becomes_a_reference_and_restarts_the_schedule():
    streams = [StreamCache()]
    plan = plan_frames(streams, [8], interval=4, update_ratio=0.5, tokens=4, geometry=(2, 2), cut_threshold=0.8)
    assert plan.ref_rows.tolist() == [0, 4] and plan.replan is not None  # periodic until detection
    within = torch.full((8, 8), 0.95)
    within[3:, 0] = 0.5  # frames 3.. differ from frame 0: a cut at 3
    fresh = plan.replan(within, torch.zeros(8, 0))
    assert fresh.ref_rows.tolist() == [0, 3, 7] and fresh.cuts == 1 and fresh.phases == {0: 3}
    assert fresh.dyn_rows.tolist() == [1, 2, 4, 5, 6] and fresh.dyn_source.tolist() == [0, 0, 1, 1, 1]


def test_the_carried_reference_is_checked_too_and_no_cut_keeps_the_periodic_plan():
    stream = StreamCache(frames_seen=5, phase=1, geometry=(2, 2), blocks={0: None})
    plan = plan_frames([stream], [4], interval=4, update_ratio=0.5, tokens=4, geometry=(2, 2), cut_threshold=0.8)
    assert plan.ref_rows.tolist() == [0] and plan.carried_streams == [0]  # frame 5 = 1 + 4: periodic
    assert plan.replan(torch.full((4, 4), 0.9), torch.full((4, 1), 0.9)).ref_rows.tolist() == [0]
    stream = StreamCache(frames_seen=2, geometry=(2, 2), blocks={0: None})
    plan = plan_frames([stream], [2], interval=4, update_ratio=0.5, tokens=4, geometry=(2, 2), cut_threshold=0.8)
    fresh = plan.replan(torch.full((2, 2), 0.9), torch.tensor([[0.2], [0.2]]))
    assert fresh.ref_rows.tolist() == [0] and fresh.dyn_source.tolist() == [1] and fresh.phases == {0: 2}


def test_no_threshold_no_detection():
    plan = plan_frames([StreamCache()], [8], interval=4, update_ratio=0.5, tokens=4, geometry=(2, 2))
    assert plan.replan is None and plan.cuts == 0


def sessions(family: str):
    if family == "llava":
        return tiny_llava(), tiny_processor(), 28
    return tiny_qwen("qwen2_5_vl"), tiny_qwen_processor(), 32


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_a_cut_forces_a_dense_frame_and_a_static_stream_adds_none(family):
    model, processor, size = sessions(family)
    per = 1 if family == "llava" else 2  # frames per temporal slice
    frames = two_scenes(size, 3 * per, 5 * per)  # slices 0-2 one scene, 3-7 another
    counts = {}
    for threshold in (None, 0.83):
        config = stc.STCConfig(cache_interval=4, pruner=False, cut_threshold=threshold)
        with StreamingSession(model, processor, config=config) as session:
            session.append_frames(frames[: 4 * per])
            session.append_frames(frames[4 * per :])  # the schedule's restart carries over calls
            stats = stc.stats(model)
            counts[threshold] = (stats["reference_frames"], stats["cut_references"])
    assert counts[None] == (2, 0)  # slices 0 and 4
    assert counts[0.83] == (3, 1)  # 0, the cut at 3, and 3 + 4 = 7
    static = np.stack([noisy(frames[0], i) for i in range(8 * per)])
    with StreamingSession(model, processor, config=stc.STCConfig(cache_interval=4, pruner=False)) as session:
        session.append_frames(static)
        assert (stc.stats(model)["reference_frames"], stc.stats(model)["cut_references"]) == (2, 0)


def test_the_cut_frame_is_encoded_densely():
    model, processor, size = sessions("llava")
    frames = two_scenes(size, 3, 2)
    outputs = {}
    for name, config in (("dense", None), ("cut", stc.STCConfig(cache_interval=4, update_ratio=0.25, pruner=False))):
        captured = []
        hook = model.model.multi_modal_projector.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
        try:
            with StreamingSession(model, processor, config=config) as session:
                session.append_frames(frames)
        finally:
            hook.remove()
        outputs[name] = torch.cat(captured)
    torch.testing.assert_close(outputs["cut"][3], outputs["dense"][3], rtol=1e-9, atol=1e-9)
    assert not torch.allclose(outputs["cut"][4], outputs["dense"][4], rtol=1e-9, atol=1e-9)  # reused again


def test_a_cut_decision_under_autograd_raises_no_warning():
    """A forward with autograd on (training, a hook) hands the plan similarities that require grad:
    reading them must not warn "Converting a tensor with requires_grad=True to a scalar" (a
    UserWarning the test run used to print from the Cacher)."""
    plan = plan_frames([StreamCache()], [8], interval=4, update_ratio=0.5, tokens=4, geometry=(2, 2), cut_threshold=0.8)
    within = torch.full((8, 8), 0.95)
    within[3:, 0] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = plan.replan(within.requires_grad_(), torch.zeros(8, 0, requires_grad=True))
    assert fresh.ref_rows.tolist() == [0, 3, 7] and fresh.cuts == 1
