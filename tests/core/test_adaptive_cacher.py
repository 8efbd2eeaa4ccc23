"""The adaptive STC-Cacher (issue 34): change gate, drift-triggered references, shared selection,
per-token refresh, and exactness when every adaptive knob is off."""

import pytest
import torch

import stc
from stc.cacher import RecomputeGate, StreamCache, plan_frames
from tests.integrations.test_compiled import build, chunks, stream_features


def test_gate_buckets_floor_and_ceiling():
    gate = RecomputeGate(threshold=0.1, floor=0.05, ceiling=0.25, buckets=4)
    assert gate.sizes(100) == [5, 11, 18, 25]
    assert gate.budget(0.0, 100) == 5  # floor
    assert gate.budget(0.06, 100) == 11 and gate.budget(0.11, 100) == 11  # rounded up to a bucket
    assert gate.budget(0.9, 100) == 25  # ceiling
    assert RecomputeGate(0.1, 0.0, 0.25, 1).sizes(100) == [25]
    assert RecomputeGate(0.1, 0.0, 0.25, 4).budget(0.0, 100) == 1  # at least one token


def test_gate_counts_changed_tokens_on_hand_made_cosines():
    gate = RecomputeGate(threshold=0.1, floor=0.0, ceiling=1.0, buckets=5)
    cosines = torch.tensor([0.95, 0.85, 0.5, 1.0])  # 1 - cos: 0.05, 0.15, 0.5, 0
    assert gate.changed(cosines).tolist() == [False, True, True, False]


def test_plan_sets_the_gated_budget_from_the_most_changed_frame():
    gate = RecomputeGate(threshold=0.1, floor=0.1, ceiling=0.5, buckets=3)  # sizes 2, 6, 10 of 20
    plan = plan_frames([StreamCache()], [4], interval=4, update_ratio=0.5, tokens=20, geometry=(1,), gate=gate)
    assert plan.replan is not None and plan.gated_recompute is None
    sim, changed = torch.full((4, 4), 0.99), torch.zeros(4, 4)
    changed[2, 0] = 0.2  # frame 2 has a fifth of its tokens changed since frame 0
    fresh = plan.replan(sim, torch.zeros(4, 0), changed=(changed, torch.zeros(4, 0)))
    assert fresh.gated_recompute == 6 and fresh.num_recompute == 10
    fresh = plan.replan(sim, torch.zeros(4, 0), changed=(torch.zeros(4, 4), torch.zeros(4, 0)))
    assert fresh.gated_recompute == 2


def test_drift_makes_a_reference_and_a_static_stream_makes_none():
    plan = plan_frames([StreamCache()], [8], interval=8, update_ratio=0.25, tokens=4, geometry=(1,), drift_threshold=0.9)
    static = plan.replan(torch.full((8, 8), 0.97), torch.zeros(8, 0))
    assert static.ref_rows.tolist() == [0] and static.drifts == 0
    within = torch.full((8, 8), 0.97)
    within[4:, 0] = 0.88  # slow drift: frames 4.. have moved away from frame 0, not a cut
    drift = plan.replan(within, torch.zeros(8, 0))
    assert drift.ref_rows.tolist() == [0, 4] and drift.drifts == 1 and drift.cuts == 0
    assert drift.dyn_source.tolist() == [0, 0, 0, 1, 1, 1] and drift.phases == {0: 4}


def test_drift_mode_caps_a_reference_at_n_max_frames_and_cuts_stay_cuts():
    plan = plan_frames([StreamCache()], [8], interval=3, update_ratio=0.25, tokens=4, geometry=(1,),
                       cut_threshold=0.5, drift_threshold=0.9)
    within = torch.full((8, 8), 0.97)
    within[2:, 0] = 0.3  # a cut at 2
    fresh = plan.replan(within, torch.zeros(8, 0))
    assert fresh.ref_rows.tolist() == [0, 2, 5] and fresh.cuts == 1 and fresh.drifts == 0  # 5 = 2 + N_max


def features(model, config, inputs):
    return torch.cat([f.flatten() for f in stream_features(model, config, inputs)])


@pytest.fixture(scope="module")
def llava_chunks():
    model = build("llava_onevision")
    return model, chunks("llava_onevision", count=3, frames=4)


def test_every_adaptive_knob_off_is_the_fixed_cacher_exactly(llava_chunks):
    model, inputs = llava_chunks
    fixed = stc.STCConfig(cache_interval=2, update_ratio=0.5, pruner=False)
    off = fixed.replace(drift_threshold=None, change_threshold=None, share_selection=False, refresh_tokens=False,
                        min_update_ratio=0.05, recompute_buckets=4)
    assert torch.equal(features(model, fixed, inputs), features(model, off, inputs))
    dense = features(model, stc.STCConfig.off(), inputs)
    exact = fixed.replace(update_ratio=1.0, change_threshold=0.5, min_update_ratio=1.0)  # gate pinned at all tokens
    torch.testing.assert_close(features(model, exact, inputs), dense, rtol=1e-9, atol=1e-9)


def test_adaptive_options_recompute_less_and_stay_close_to_dense(llava_chunks):
    model, inputs = llava_chunks
    dense = features(model, stc.STCConfig.off(), inputs)
    config = stc.STCConfig(cache_interval=4, update_ratio=0.5, pruner=False, change_threshold=0.05,
                           min_update_ratio=0.05, share_selection=True, refresh_tokens=True)
    out = features(model, config, inputs)
    assert float((out - dense).norm() / dense.norm()) < 0.05
    with stc.patched(model, config), stc.stream(model), torch.no_grad():
        for chunk in inputs:
            model.model.get_video_features(**chunk, return_dict=True)
        stats = stc.stats(model)
    assert 0 < stats["cached_recompute_share"] < 0.5 and stats["references_per_100_frames"] == 25


def test_per_token_refresh_error_stays_bounded_over_100_static_frames(llava_chunks):
    model, _ = llava_chunks
    pixels, _ = __import__("tests.tiny", fromlist=["llava_video_inputs"]).llava_video_inputs(frames=1, smooth=True)
    noise = torch.Generator().manual_seed(0)
    frames = [pixels + 0.01 * torch.randn(pixels.shape, generator=noise, dtype=pixels.dtype) for _ in range(100)]
    inputs = [{"pixel_values_videos": f} for f in frames]  # one frame per call: refresh after every frame
    dense = stream_features(model, stc.STCConfig.off(), inputs)
    config = stc.STCConfig(cache_interval=100, update_ratio=0.25, cut_threshold=None, pruner=False, refresh_tokens=True)
    out = stream_features(model, config, inputs)
    errors = [float((a - b).norm() / b.norm()) for a, b in zip(out, dense)]
    assert errors[0] == 0.0 and max(errors) < 0.05
    assert max(errors[50:]) < 2 * max(errors[1:50]) + 1e-3  # no accumulation over the stream


@pytest.mark.parametrize("name, value", [("drift_threshold", 1.0), ("change_threshold", 0.0), ("min_update_ratio", -0.1),
                                         ("recompute_buckets", 0), ("share_selection", 1), ("refresh_tokens", "yes")])
def test_adaptive_knobs_are_validated_naming_the_field(name, value):
    with pytest.raises(ValueError, match=f"STCConfig.{name}"):
        stc.STCConfig(**{name: value})


def test_gate_floor_above_its_ceiling_is_refused():
    with pytest.raises(ValueError, match="STCConfig.min_update_ratio"):
        stc.STCConfig(update_ratio=0.1, change_threshold=0.1, min_update_ratio=0.2)
    assert stc.STCConfig(update_ratio=0.01).min_update_ratio == 0.05  # the floor matters only with the gate


def gated_stream(model, config, chunks_in) -> tuple[list[torch.Tensor], list[float]]:
    """Features of each chunk, encoded as one stream, and each chunk's share of tokens recomputed
    per layer on its cached frames (the gate's budget for that call)."""
    out, shares, before = [], [], (0, 0)
    with stc.patched(model, config), stc.stream(model), torch.no_grad():
        for chunk in chunks_in:
            out.append(model.model.get_video_features(**chunk, return_dict=True).pooler_output)
            stats = stc.stats(model)
            now = (stats["cached_tokens"], stats["cached_tokens_recomputed"])
            shares.append((now[1] - before[1]) / (now[0] - before[0]))
            before = now
    return out, shares


def test_compiled_gate_keeps_a_bounded_set_of_graphs_over_a_varying_stream():
    """The gate rounds its budget to `recompute_buckets` sizes: over a stream whose chunks change
    by very different amounts, the compiled path traces at most one set of graphs per size (no
    graph break), matches the eager path, and replays them once every size has been met."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = build("llava_onevision")
    pixels, _ = __import__("tests.tiny", fromlist=["llava_video_inputs"]).llava_video_inputs(frames=4, smooth=True)
    noise = torch.Generator().manual_seed(1)
    inputs = []
    for rows in [0, 1, 0, 4, 2, 0, 4, 1, 2, 0]:  # per chunk: how many of the 4 rows of patches (7 px) change
        moved = pixels.clone()
        moved[..., : 7 * rows, :] += torch.randn(moved[..., : 7 * rows, :].shape, generator=noise, dtype=pixels.dtype)
        inputs.append({"pixel_values_videos": moved})
    config = stc.STCConfig(cache_interval=2, update_ratio=0.5, cut_threshold=None, pruner=False, change_threshold=0.05,
                           min_update_ratio=0.05, recompute_buckets=4, share_selection=True, refresh_tokens=True)
    eager, shares = gated_stream(model, config, inputs)
    sizes = sorted(set(shares))
    assert len(sizes) >= 3, f"the stream did not exercise the buckets: {shares}"  # else the bound says nothing
    assert len(sizes) <= config.recompute_buckets
    counters.clear()
    compiled, compiled_shares = gated_stream(model, config.replace(compile=True), inputs[:1])
    per_size = counters["stats"]["unique_graphs"]  # the graphs of one budget size
    more, compiled_shares = gated_stream(model, config.replace(compile=True), inputs)
    assert compiled_shares == shares
    assert not counters["graph_break"]
    assert 0 < per_size and counters["stats"]["unique_graphs"] <= per_size * len(sizes)
    graphs = counters["stats"]["unique_graphs"]
    gated_stream(model, config.replace(compile=True), inputs)  # every size met: replays only
    assert counters["stats"]["unique_graphs"] == graphs
    for a, b in zip(more, eager):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
