"""The causal adaptive budget: counts follow the frame change and average to the fixed budget's
count round(keep_ratio · n), so that both budgets spend the same tokens."""

import math
import random

import pytest
import torch

from stc.pruner import PrunerHistory, keep_count, prune_frames
from stc.pruner.budget import BudgetState, adaptive_counts, frame_change, select_counts


@pytest.mark.parametrize("tokens, keep_ratio", [(196, 0.3), (196, 0.15), (729, 0.25), (16, 0.1), (4, 0.01)])
def test_the_running_mean_stays_within_one_token_of_keep_ratio(tokens, keep_ratio):
    rng = random.Random(tokens)
    state, given = BudgetState(), 0
    mean_keep = keep_count(tokens, keep_ratio)  # what the fixed budget keeps per frame
    for t in range(1, 2001):
        change = math.nan if t == 1 else rng.choice([0.0, 0.001, rng.random(), 5 * rng.random()])
        (count,) = adaptive_counts([change], tokens, keep_ratio, state)
        assert 1 <= count <= tokens
        given += count
        assert abs(given / t - mean_keep) <= 1 + 1e-9
        assert abs(given - mean_keep * t) <= tokens + 1e-9  # the bank: at most one frame's tokens
        assert given <= mean_keep * t  # never more than the fixed budget


def test_changed_frames_get_more_tokens_and_repeated_frames_fewer():
    state = BudgetState()
    counts = adaptive_counts([math.nan, 0.1, 0.1, 0.1, 0.0, 0.4, 0.1], 100, 0.3, state)
    assert counts[0] == 30 and counts[1] == counts[2] == 30
    assert counts[4] < 30 < counts[5]


def test_one_call_equals_frame_by_frame():
    changes = [math.nan, 0.2, 0.0, 0.9, 0.1, 0.3, 0.0, 0.0]
    whole = adaptive_counts(changes, 196, 0.3, BudgetState())
    state = BudgetState()
    assert whole == [c for change in changes for c in adaptive_counts([change], 196, 0.3, state)]


def test_frame_change_is_the_mean_positional_change_and_causal():
    torch.manual_seed(0)
    frames = torch.randn(5, 16, 8)
    frames[2] = frames[1]  # a repeated frame
    change = frame_change(frames, PrunerHistory())
    assert math.isnan(change[0]) and change[2] == pytest.approx(0.0, abs=1e-6) and change[3] > 0.5
    assert torch.allclose(frame_change(frames[:3], PrunerHistory())[1:], change[1:3])
    history = PrunerHistory()
    prune_frames(frames[:2], history, 0.5, scoring="positional")  # remembers frame 1
    assert torch.allclose(frame_change(frames[2:], history), change[2:])


def test_select_counts_keeps_each_frames_highest_in_order():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    assert [p.tolist() for p in select_counts(scores, [3, 1])] == [[1, 2, 3], [0]]


# -- wired in: STCConfig.pruner_budget through STCState -------------------------------------------

from stc.config import PRUNER_SCORINGS, STCConfig  # noqa: E402
from stc.state import STCState  # noqa: E402


def stream_with_repeats(frames: int, tokens: int = 196, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """Random frames [F, n, D] where every third frame repeats its predecessor and every fourth
    changes only a few positions (so the frame change varies a lot)."""
    gen = torch.Generator().manual_seed(seed)
    out = [torch.randn(tokens, dim, generator=gen)]
    for t in range(1, frames):
        frame = out[-1].clone()
        if t % 3 == 0:
            pass  # a repeat
        elif t % 4 == 0:
            frame[: tokens // 10] = torch.randn(tokens // 10, dim, generator=gen)
        else:
            frame = torch.randn(tokens, dim, generator=gen)
        out.append(frame)
    return torch.stack(out)


def kept_counts(state: STCState, stream_tokens: list[torch.Tensor]) -> list[list[int]]:
    return [[len(p) for p in s.positions] for s in state.select_streams(stream_tokens)]


@pytest.mark.parametrize("scoring", PRUNER_SCORINGS)
@pytest.mark.parametrize("tokens, keep_ratio", [(196, 0.3), (196, 0.15), (16, 0.3)])
def test_adaptive_budgets_over_a_stream_average_to_keep_ratio(scoring, tokens, keep_ratio):
    state = STCState(STCConfig(cacher=False, pruner_budget="adaptive", keep_ratio=keep_ratio, pruner_scoring=scoring))
    state.streaming = True
    video = stream_with_repeats(60, tokens)
    counts = []
    for start in range(0, 60, 7):  # chunks of 7 frames, as the engine hands them over
        counts += kept_counts(state, [video[start : start + 7]])[0]
    mean_keep = keep_count(tokens, keep_ratio)
    for t in range(1, len(counts) + 1):
        assert abs(sum(counts[:t]) / t - mean_keep) <= 1 + 1e-9
        assert abs(sum(counts[:t]) - mean_keep * t) <= tokens + 1e-9
        assert sum(counts[:t]) <= mean_keep * t  # never more than the fixed budget
    assert len(set(counts)) > 2  # the count does follow the change
    assert state.stats.llm_tokens_kept - state.stats.llm_tokens_in == sum(counts) - 60 * tokens


def test_a_static_stream_gives_repeated_frames_fewer_tokens():
    state = STCState(STCConfig(cacher=False, pruner_budget="adaptive", keep_ratio=0.3))
    video = stream_with_repeats(30)
    counts = kept_counts(state, [video])[0]
    fixed = keep_count(196, 0.3)
    repeats = [counts[t] for t in range(3, 30, 3)]
    changed = [counts[t] for t in range(1, 30) if t % 3 and t % 4]
    assert max(repeats) < fixed <= min(changed)  # frame 1 is the first change: the mean so far
    # the bucket (at most t tokens saved by frame t) lets the savings grow along the stream
    assert sum(repeats) / len(repeats) < fixed - 10 and sum(changed) / len(changed) > fixed + 5
    assert repeats[-1] < 0.6 * fixed and max(counts) > 1.4 * fixed


def test_two_streams_budgets_are_independent():
    """Two streams in one call each get the counts they get alone: one stream's change does not
    move the other's budget."""
    busy, still = stream_with_repeats(20, seed=1), stream_with_repeats(1, seed=2).expand(20, -1, -1).clone()
    config = STCConfig(cacher=False, pruner_budget="adaptive", keep_ratio=0.3)
    together = STCState(config)
    both = together.select_streams([busy, still])
    alone = [STCState(config).select_streams([video])[0] for video in (busy, still)]
    for joint, single in zip(both, alone):
        assert [p.tolist() for p in joint.positions] == [p.tolist() for p in single.positions]
    assert [s.budget.spent for s in together.streams] == [sum(len(p) for p in s.positions) for s in alone]
    assert len({len(p) for p in both[0].positions}) > 1


@pytest.mark.parametrize("coverage", [0.0, 0.05])
def test_fixed_budget_is_todays_selection_and_equal_changes_give_it_too(coverage):
    """pruner_budget="fixed" keeps exactly prune_frames' tokens; "adaptive" on a stream whose
    frames all change equally keeps the same (every frame's weight is 1)."""
    torch.manual_seed(5)
    video = torch.randn(12, 49, 8)
    fixed = STCState(STCConfig(cacher=False, keep_ratio=0.3, coverage=coverage)).select_streams([video])[0]
    expected = prune_frames(video, PrunerHistory(), 0.3, scoring="gaussian", coverage=coverage)
    assert [p.tolist() for p in fixed.positions] == expected.tolist()
    assert all(torch.equal(t, video[f, expected[f]]) for f, t in enumerate(fixed.tokens))
    base = torch.randn(49, 8)
    rolling = torch.stack([base.roll(f, dims=0) for f in range(12)])  # every frame shifts all tokens by one
    changes = frame_change(rolling, PrunerHistory())[1:]
    assert torch.allclose(changes, changes[0].expand_as(changes))
    adaptive = STCState(STCConfig(cacher=False, keep_ratio=0.3, coverage=coverage, pruner_budget="adaptive"))
    plain = STCState(STCConfig(cacher=False, keep_ratio=0.3, coverage=coverage))
    assert [p.tolist() for p in adaptive.select_streams([rolling])[0].positions] == \
           [p.tolist() for p in plain.select_streams([rolling])[0].positions]


def test_adaptive_with_coverage_keeps_the_counts_and_reset_forgets_the_budget():
    state = STCState(STCConfig(cacher=False, pruner_budget="adaptive", keep_ratio=0.3, coverage=0.1))
    video = stream_with_repeats(15, tokens=49)
    counts = kept_counts(state, [video])[0]
    reference = adaptive_counts(frame_change(video, PrunerHistory()).tolist(), 49, 0.3, BudgetState())
    assert counts == reference
    assert state.streams[0].budget.frames == 15
    state.reset()
    assert state.streams == [] and kept_counts(state, [video])[0] == counts  # each call: a new stream


@pytest.mark.parametrize("value", ["Adaptive", "none", None, 1])
def test_an_unknown_pruner_budget_is_refused_naming_the_field(value):
    with pytest.raises(ValueError, match="pruner_budget"):
        STCConfig(pruner_budget=value)


def test_stats_report_tokens_kept_per_frame_mean_min_and_max():
    video = stream_with_repeats(30)
    adaptive = STCState(STCConfig(cacher=False, pruner_budget="adaptive", keep_ratio=0.3))
    adaptive.stats.frames = 30  # what video_pass counts (no encoder here)
    adaptive.count_llm_tokens([30 * 196], [30 * 196])  # what the adapter counts before the selection
    counts = kept_counts(adaptive, [video[:10]])[0] + kept_counts(adaptive, [video[10:]])[0]
    adaptive.select_streams([])  # a call without frames changes nothing
    stats = adaptive.stats.as_dict()
    assert stats["llm_tokens_kept_per_frame"] == sum(counts) / 30 == pytest.approx(0.3 * 196, abs=1)
    assert stats["llm_tokens_kept_per_frame_min"] == min(counts) < max(counts) == stats["llm_tokens_kept_per_frame_max"]
    fixed = STCState(STCConfig(cacher=False, keep_ratio=0.3))
    kept_counts(fixed, [video])
    assert fixed.stats.as_dict()["llm_tokens_kept_per_frame_min"] == fixed.stats.as_dict()["llm_tokens_kept_per_frame_max"] == 59
    assert STCState(STCConfig()).stats.as_dict()["llm_tokens_kept_per_frame_min"] is None  # no selection yet


@pytest.mark.parametrize("floor", [0.25, 0.5, 0.8])
def test_a_budget_floor_raises_the_fewest_tokens_and_keeps_the_mean(floor):
    video = stream_with_repeats(60)
    free = kept_counts(STCState(STCConfig(cacher=False, pruner_budget="adaptive", keep_ratio=0.3)), [video])[0]
    state = STCState(STCConfig(cacher=False, pruner_budget="adaptive", keep_ratio=0.3, budget_floor=floor))
    counts = kept_counts(state, [video])[0]
    mean_keep = keep_count(196, 0.3)
    assert min(counts) >= round(floor * mean_keep) > min(free)
    for t in range(1, 61):
        assert abs(sum(counts[:t]) / t - mean_keep) <= 1 + 1e-9
    assert max(counts) - min(counts) < max(free) - min(free)  # a floor narrows the spread


def test_budget_floor_one_is_the_fixed_count_and_zero_is_no_floor():
    rng = random.Random(3)
    changes = [math.nan] + [rng.random() for _ in range(40)]
    free = adaptive_counts(changes, 196, 0.3, BudgetState())
    assert max(free) - min(free) > 20  # the changes do vary the counts
    assert adaptive_counts(changes, 196, 0.3, BudgetState(), floor=0.0) == free
    full = adaptive_counts(changes, 196, 0.3, BudgetState(), floor=1.0)
    assert full == [keep_count(196, 0.3)] * len(full)  # a floor at the fixed count: the bucket never fills


@pytest.mark.parametrize("value", [-0.1, 1.5, "0.5", math.nan])
def test_the_budget_floor_is_validated(value):
    with pytest.raises(ValueError, match="budget_floor"):
        STCConfig(pruner_budget="adaptive", budget_floor=value)
