"""The causal adaptive budget: counts follow the frame change and average to keep_ratio · n."""

import math
import random

import pytest
import torch

from stc.pruner import PrunerHistory, prune_frames
from stc.pruner.budget import BudgetState, adaptive_counts, frame_change, select_counts


@pytest.mark.parametrize("tokens, keep_ratio", [(196, 0.3), (196, 0.15), (729, 0.25), (16, 0.1), (4, 0.01)])
def test_the_running_mean_stays_within_one_token_of_keep_ratio(tokens, keep_ratio):
    rng = random.Random(tokens)
    state, given = BudgetState(), 0
    mean_keep = min(tokens, max(1.0, keep_ratio * tokens))
    for t in range(1, 2001):
        change = math.nan if t == 1 else rng.choice([0.0, 0.001, rng.random(), 5 * rng.random()])
        (count,) = adaptive_counts([change], tokens, keep_ratio, state)
        assert 1 <= count <= tokens
        given += count
        assert abs(given / t - mean_keep) <= 1 + 1e-9
        assert abs(given - mean_keep * t) <= tokens + 1e-9  # the bank: at most one frame's tokens


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
