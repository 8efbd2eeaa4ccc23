"""The two scorer candidates of issue 35 on hand-made tensors: gaussian_positional (gaussian and
positional z-scores mixed) and cacher_change (the tokens the STC-Cacher recomputed)."""

import math

import pytest
import torch

from stc.config import STCConfig
from stc.pruner import (
    CACHER_TIE_WEIGHT,
    PrunerHistory,
    cacher_change_scores,
    gaussian_positional_scores,
    gaussian_scores,
    positional_scores,
    prune_frames,
    rank_share,
    standardised,
)
from stc.peers import FrameContext
from stc.state import STCState
from tests.core.test_pruner_scorers import scene


def z(values: torch.Tensor) -> torch.Tensor:
    return (values - values.mean()) / values.std(unbiased=False)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_gaussian_positional_is_the_weighted_sum_of_z_scores_by_hand(weight):
    torch.manual_seed(0)
    tokens = torch.randn(3, 6, 8, dtype=torch.float64)
    scores = gaussian_positional_scores(tokens, PrunerHistory(), mix_weight=weight)
    gaussian, positional = gaussian_scores(tokens, PrunerHistory()), positional_scores(tokens, PrunerHistory())
    for f in range(3):
        expected = (1 - weight) * z(gaussian[f]) + weight * z(positional[f])
        torch.testing.assert_close(scores[f], expected, rtol=0, atol=1e-9)
    if weight in (0.0, 1.0):  # the ends rank as the scorer they keep
        one = gaussian if weight == 0.0 else positional
        assert torch.equal(scores.argsort(dim=-1), one.argsort(dim=-1))


def test_standardised_scores_of_a_flat_frame_are_zero():
    assert torch.equal(standardised(torch.ones(2, 5)), torch.zeros(2, 5))


@pytest.mark.parametrize("weight", [0.3, 0.5, 0.8])
def test_gaussian_positional_keeps_a_new_object_over_a_static_one(weight):
    frames, g = scene(6)
    static, new = [0, 1], [10, 11, 14, 15]
    frames[:, static] = 5 * torch.randn(len(static), 16, generator=g)  # there from frame 0 on
    frames[4:, new] = 5 * torch.randn(len(new), 16, generator=g)  # appears at frame 4
    index = prune_frames(frames, PrunerHistory(), len(new) / 16, scoring="gaussian_positional", mix_weight=weight)
    assert index[4].tolist() == new


def test_cacher_change_keeps_what_the_cacher_recomputed_ties_by_positional_change():
    frames, g = scene(3)
    static, new = [0, 1], [5, 6]
    frames[:, static] = 5 * torch.randn(len(static), 16, generator=g)  # a static object: not recomputed
    frames[2, new] = 5 * torch.randn(len(new), 16, generator=g)  # a new object at frame 2
    share = torch.zeros(3, 16)
    share[0] = math.nan  # frame 0: a reference (computed densely)
    share[1, 9] = 0.5  # frame 1: one token recomputed in half the blocks
    share[2, new] = 1.0  # frame 2: the new object's tokens recomputed in every block
    kept = prune_frames(frames, PrunerHistory(), 2 / 16, scoring="cacher_change", recomputed=share)
    positional = positional_scores(frames, PrunerHistory())
    assert kept[2].tolist() == new
    assert 9 in kept[1].tolist() and kept[1].tolist() != kept[0].tolist()
    assert kept[0].tolist() == positional[0].topk(2).indices.sort().values.tolist()  # a reference: positional
    runner_up = positional[1].masked_fill(torch.arange(16) == 9, -1).argmax().item()  # the tie among the zeros
    assert kept[1].tolist() == sorted([9, runner_up])
    scores = cacher_change_scores(frames, PrunerHistory(), share)
    torch.testing.assert_close(scores[2], share[2] + CACHER_TIE_WEIGHT * rank_share(positional)[2])


def test_cacher_change_without_a_signal_is_the_positional_rule():
    frames, _ = scene(4)
    assert torch.equal(cacher_change_scores(frames, PrunerHistory()), positional_scores(frames, PrunerHistory()))
    assert torch.equal(cacher_change_scores(frames, PrunerHistory(), torch.full((4, 16), math.nan)),
                       positional_scores(frames, PrunerHistory()))


def test_the_state_hands_the_cacher_signal_to_the_scorer_only_when_the_cacher_runs():
    assert STCState(STCConfig(pruner_scoring="cacher_change")).context_needs == frozenset({"recomputed"})
    assert STCState(STCConfig(pruner_scoring="cacher_change", cacher=False)).context_needs == frozenset()
    assert STCState(STCConfig()).context_needs == frozenset()
    frames, _ = scene(2)
    share = torch.zeros(2, 16)
    share[1, [3, 7, 12]] = 1.0
    state = STCState(STCConfig(pruner_scoring="cacher_change", keep_ratio=3 / 16))
    selection = state.select_streams([frames], [FrameContext(recomputed=share)])[0]
    assert selection.positions[1].tolist() == [3, 7, 12]


@pytest.mark.parametrize("field, value", [("mix_weight", -0.1), ("mix_weight", 1.5), ("mix_weight", "0.5"),
                                          ("mix_weight", math.nan)])
def test_the_mix_weight_is_validated(field, value):
    with pytest.raises(ValueError, match=field):
        STCConfig(**{field: value})
