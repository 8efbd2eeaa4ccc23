"""STC-Pruner core: scores against hand computations, selection, history."""

import pytest
import torch
import torch.nn.functional as F

from stc.config import PRUNER_SCORINGS, STCConfig
from stc.pruner import (
    PrunerHistory,
    dual_anchor_scores,
    gaussian_scores,
    keep_count,
    prune_frames,
    select_tokens,
)
from stc.state import STCState


def cos(a, b):
    return (a @ b / (a.norm() * b.norm())).item()


def test_keep_count_is_round_of_n_times_ratio():
    assert keep_count(196, 0.3) == 59
    assert keep_count(196, 0.25) == 49
    assert keep_count(4, 0.3) == 1
    assert keep_count(4, 0.01) == 1
    assert keep_count(16, 1.0) == 16


def test_dual_anchor_scores_match_the_formula_by_hand():
    torch.manual_seed(0)
    tokens = torch.randn(3, 5, 4, dtype=torch.float64)
    alpha = 0.3
    scores = dual_anchor_scores(tokens, PrunerHistory(), alpha)
    scas = [tokens[f].mean(0) for f in range(3)]
    for f in range(3):
        for i in range(5):
            z = tokens[f, i]
            spatial = 1 - cos(z, scas[f])
            if f == 0:
                expected = spatial  # no history: spatial anchor only
            else:
                tca = torch.stack(scas[:f]).mean(0)
                expected = alpha * (1 - cos(z, tca)) + (1 - alpha) * spatial
            assert scores[f, i].item() == pytest.approx(expected, abs=1e-6)


def test_history_window_limits_the_temporal_anchor():
    torch.manual_seed(1)
    tokens = torch.randn(4, 6, 3, dtype=torch.float64)
    history = PrunerHistory(window=2)
    scores = dual_anchor_scores(tokens, history, alpha=1.0)
    scas = [tokens[f].mean(0) for f in range(4)]
    tca = (scas[1] + scas[2]) / 2  # frame 3 sees frames 1 and 2 only
    for i in range(6):
        assert scores[3, i].item() == pytest.approx(1 - cos(tokens[3, i], tca), abs=1e-6)


@pytest.mark.parametrize("scoring", PRUNER_SCORINGS)
def test_history_carries_across_calls_like_one_call(scoring):
    torch.manual_seed(2)
    tokens = torch.randn(6, 8, 5)
    for window in (None, 3):
        one = PrunerHistory(window)
        whole = prune_frames(tokens, one, 0.5, scoring=scoring, grid=(2, 4))
        split = PrunerHistory(window)
        parts = torch.cat([prune_frames(tokens[:2], split, 0.5, scoring=scoring, grid=(2, 4)),
                           prune_frames(tokens[2:], split, 0.5, scoring=scoring, grid=(2, 4))])
        assert torch.equal(whole, parts)
        assert len(one) == len(split) == 6


def test_selection_keeps_top_scores_in_original_order():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.2]])
    assert select_tokens(scores, 3).tolist() == [[1, 2, 3]]


def test_prune_frames_keeps_round_n_ratio_in_order():
    torch.manual_seed(3)
    index = prune_frames(torch.randn(4, 196, 8), PrunerHistory(), 0.3, scoring=STCConfig().pruner_scoring)
    assert index.shape == (4, 59)
    assert torch.all(index[:, 1:] > index[:, :-1])


@pytest.mark.parametrize("scoring", PRUNER_SCORINGS)
def test_novel_token_is_kept(scoring):
    """A token unlike the frame and unlike the past is the one kept."""
    frames = torch.ones(3, 6, 4) + 0.01 * torch.randn(3, 6, 4)
    frames[2, 4] = torch.tensor([-1.0, 2.0, -3.0, 0.5])
    index = prune_frames(frames, PrunerHistory(), keep_ratio=1 / 6, scoring=scoring, grid=(2, 3))
    assert index[2].tolist() == [4]


def test_gaussian_scores_match_the_release_rule_by_hand():
    torch.manual_seed(4)
    tokens = torch.randn(2, 5, 6, dtype=torch.float64)
    scores = gaussian_scores(tokens, PrunerHistory())
    bandwidths = (0.125, 0.25, 0.5, 1.0, 2.0)
    kernel = lambda a, b: sum(torch.exp(-((a - b) ** 2).sum() / (2 * s)) for s in bandwidths)
    for f in range(2):
        var = tokens[f].var(0, unbiased=False)
        channels = torch.argsort(var)[:3]
        z = F.normalize(tokens[f][:, channels], dim=-1)
        frame_mean = z.mean(0)
        memory = torch.stack([tokens[g].mean(0) for g in range(f + 1)]).mean(0)[channels]
        memory = memory / memory.norm()
        for i in range(5):
            expected = -(kernel(z[i], frame_mean) + kernel(z[i], memory))
            assert scores[f, i].item() == pytest.approx(expected.item(), abs=1e-9)


def test_state_prunes_each_stream_separately_and_reset_forgets_history():
    state = STCState(STCConfig(keep_ratio=0.5))
    tokens = torch.randn(2, 3, 4, 8)
    index = state.prune(tokens)
    assert index.shape == (2, 3, 2)
    assert [len(s.history) for s in state.streams] == [3, 3]
    alone = prune_frames(tokens[1], PrunerHistory(), 0.5, scoring=STCConfig().pruner_scoring)
    assert torch.equal(index[1], alone)
    state.reset()
    assert state.streams == []


def test_gaussian_scorer_first_run_in_inference_mode_still_serves_autograd():
    from stc.pruner.scorers import _kernel_scales

    _kernel_scales.cache_clear()
    tokens = torch.randn(2, 5, 6)
    with torch.inference_mode():
        gaussian_scores(tokens, PrunerHistory())  # the engine's first call: inference mode
    leaf = tokens.clone().requires_grad_()
    gaussian_scores(leaf, PrunerHistory()).sum().backward()  # then a training-style caller
    assert leaf.grad is not None
