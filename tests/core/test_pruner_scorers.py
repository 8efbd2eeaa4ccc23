"""The Pruner's change scorers (positional, change_novelty, motion) and the coverage option, on
hand-made frames: formulas by hand, what each keeps, causality, batching."""

import pytest
import torch
import torch.nn.functional as F

from stc.errors import ConfigError
from stc.pruner import (
    NOVELTY_MEMORY_RATE,
    PRUNER_SCORINGS,
    SCORERS,
    PrunerHistory,
    change_novelty_scores,
    motion_scores,
    positional_scores,
    prune_frames,
)

CHANGE_SCORERS = ("positional", "change_novelty", "motion")


def cos(a, b):
    return (a @ b / (a.norm() * b.norm())).item()


def scene(frames, rows=4, cols=4, dim=16, seed=0, noise=0.01):
    """A static textured background (one random token per position) with a little noise per frame."""
    g = torch.Generator().manual_seed(seed)
    background = torch.randn(rows * cols, dim, generator=g)
    return background + noise * torch.randn(frames, rows * cols, dim, generator=g), g


def test_positional_scores_match_the_rule_by_hand():
    torch.manual_seed(0)
    tokens = torch.randn(3, 4, 5, dtype=torch.float64)
    scores = positional_scores(tokens, PrunerHistory())
    for i in range(4):
        assert scores[0, i].item() == pytest.approx(1 - cos(tokens[0, i], tokens[0].mean(0)), abs=1e-9)
        for f in (1, 2):
            assert scores[f, i].item() == pytest.approx(1 - cos(tokens[f, i], tokens[f - 1, i]), abs=1e-9)


def test_change_novelty_scores_match_the_rule_by_hand():
    torch.manual_seed(1)
    tokens = torch.randn(4, 3, 5, dtype=torch.float64)
    w, rate = 0.3, NOVELTY_MEMORY_RATE
    scores = change_novelty_scores(tokens, PrunerHistory(), novelty_weight=w)
    memory = tokens[0].clone()
    for f in range(1, 4):
        for i in range(3):
            change = 1 - cos(tokens[f, i], tokens[f - 1, i])
            novelty = 1 - cos(tokens[f, i], memory[i])
            assert scores[f, i].item() == pytest.approx((1 - w) * change + w * novelty, abs=1e-9)
        memory = (1 - rate) * memory + rate * tokens[f]


@pytest.mark.parametrize("radius", [1, 2])
def test_motion_scores_take_the_best_match_within_the_radius(radius):
    torch.manual_seed(2)
    rows, cols = 3, 4
    tokens = torch.randn(2, rows * cols, 6, dtype=torch.float64)
    scores = motion_scores(tokens, PrunerHistory(), motion_radius=radius, grid=(rows, cols))
    for r in range(rows):
        for c in range(cols):
            near = [tokens[0, rr * cols + cc] for rr in range(rows) for cc in range(cols)
                    if abs(rr - r) <= radius and abs(cc - c) <= radius]
            best = max(cos(tokens[1, r * cols + c], p) for p in near)
            assert scores[1, r * cols + c].item() == pytest.approx(1 - best, abs=1e-9)


@pytest.mark.parametrize("scoring", CHANGE_SCORERS)
def test_a_new_object_is_kept_over_a_static_one(scoring):
    frames, g = scene(6)
    static, new = [0, 1], [10, 11, 14, 15]
    frames[:, static] = 5 * torch.randn(len(static), 16, generator=g)  # there from frame 0 on
    frames[4:, new] = 5 * torch.randn(len(new), 16, generator=g)  # appears at frame 4
    index = prune_frames(frames, PrunerHistory(), len(new) / 16, scoring=scoring)
    assert index[4].tolist() == new


def test_change_novelty_keeps_a_new_object_after_it_stops_and_forgets_one_seen_long_ago():
    frames, g = scene(40)
    first, second = [0, 1, 4, 5], [10, 11, 14, 15]
    frames[3:, first] = 5 * torch.randn(4, 16, generator=g)  # arrives at frame 3, then stays
    frames[35:, second] = 5 * torch.randn(4, 16, generator=g)  # arrives at frame 35, then stays
    novelty = prune_frames(frames, PrunerHistory(), 4 / 16, scoring="change_novelty")
    positional = prune_frames(frames, PrunerHistory(), 4 / 16, scoring="positional")
    assert novelty[4].tolist() == novelty[5].tolist() == first  # still kept after it stopped changing
    assert positional[4].tolist() != first  # the positional rule sees noise there
    assert novelty[36].tolist() == second  # the one seen long ago no longer competes


def moving_object_frames(frames=6, rows=6, cols=6, dim=16, seed=3):
    """A smooth background (nearly the same token everywhere) and a 2x2 object of distinct tokens
    moving one column right per frame from column 0."""
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(dim, generator=g) + 0.05 * torch.randn(frames, rows * cols, dim, generator=g)
    body = 5 * torch.randn(2, 2, dim, generator=g)
    for f in range(frames):
        for dr in range(2):
            for dc in range(2):
                out[f, (1 + dr) * cols + f + dc] = body[dr, dc]
    return out, g


def test_motion_does_not_keep_a_moving_object_everywhere_it_goes():
    frames, g = moving_object_frames()
    new = [4 * 6 + 1, 4 * 6 + 2, 5 * 6 + 1, 5 * 6 + 2]  # a static object appears at frame 3
    frames[3:, new] = 5 * torch.randn(4, 16, generator=g)
    scores = motion_scores(frames, PrunerHistory())
    moving = [(1 + dr) * 6 + 3 + dc for dr in range(2) for dc in range(2)]  # the object at frame 3
    assert scores[3, moving].max() < 0.05 < 0.5 < scores[3, new].min()
    assert prune_frames(frames, PrunerHistory(), 4 / 36, scoring="motion")[3].tolist() == new
    positional = prune_frames(frames, PrunerHistory(), 4 / 36, scoring="positional")[3].tolist()
    assert set(positional) != set(new)  # without motion compensation the moving object's edges compete


def test_coverage_spends_a_static_scene_evenly_over_time():
    frames, _ = scene(32)
    kept = torch.zeros(16)
    for positions in prune_frames(frames, PrunerHistory(), 0.25, scoring="positional", coverage=1.0):
        kept[positions] += 1
    assert kept.max() - kept.min() <= 1 and kept.sum() == 32 * 4
    without = torch.zeros(16)
    for positions in prune_frames(frames, PrunerHistory(), 0.25, scoring="gaussian"):
        without[positions] += 1
    assert without.max() - without.min() >= 16  # the same few tokens win every frame


def test_a_small_coverage_still_reaches_every_position():
    frames, _ = scene(100)
    kept = {coverage: torch.zeros(16) for coverage in (0.0, 0.05)}
    for coverage, counts in kept.items():
        for positions in prune_frames(frames, PrunerHistory(), 0.25, scoring="gaussian", coverage=coverage):
            counts[positions] += 1
    assert kept[0.0].min() == 0 and kept[0.05].min() >= 1


def test_coverage_zero_is_the_plain_selection():
    frames, _ = scene(5)
    for scoring in PRUNER_SCORINGS:
        assert torch.equal(prune_frames(frames, PrunerHistory(), 0.3, scoring=scoring, coverage=0.0),
                           prune_frames(frames, PrunerHistory(), 0.3, scoring=scoring))


@pytest.mark.parametrize("coverage", [0.0, 0.2])
@pytest.mark.parametrize("scoring", PRUNER_SCORINGS)
def test_each_scorer_is_causal(scoring, coverage):
    """Frame t's scores and kept tokens do not change when later frames come in the same call."""
    frames, _ = scene(7)
    history = PrunerHistory()
    short = SCORERS[scoring](frames[:4], history)
    long = SCORERS[scoring](frames, history)
    assert torch.allclose(short, long[:4], atol=1e-6)
    kept_short = prune_frames(frames[:4], PrunerHistory(), 0.3, scoring=scoring, coverage=coverage)
    kept_long = prune_frames(frames, PrunerHistory(), 0.3, scoring=scoring, coverage=coverage)
    assert torch.equal(kept_short, kept_long[:4])


@pytest.mark.parametrize("coverage", [0.0, 0.2])
@pytest.mark.parametrize("scoring", PRUNER_SCORINGS)
def test_frames_in_one_call_equal_frames_one_by_one(scoring, coverage):
    frames, _ = moving_object_frames(frames=5)
    whole, one = PrunerHistory(), PrunerHistory()
    together = prune_frames(frames, whole, 0.3, scoring=scoring, coverage=coverage)
    apart = torch.cat([prune_frames(frames[f : f + 1], one, 0.3, scoring=scoring, coverage=coverage) for f in range(5)])
    assert torch.equal(together, apart)
    for name in ("previous", "memory", "last_kept"):
        a, b = getattr(whole, name), getattr(one, name)
        assert (a is None and b is None) or torch.allclose(a.float(), b.float(), atol=1e-6)


@pytest.mark.parametrize("scoring", CHANGE_SCORERS)
def test_a_new_token_count_starts_over_with_the_first_frame_rule(scoring):
    history = PrunerHistory()
    prune_frames(torch.randn(2, 16, 8), history, 0.5, scoring=scoring, coverage=0.5)
    frame = torch.randn(1, 9, 8)
    expected = 1 - F.cosine_similarity(frame, frame.mean(1, keepdim=True), dim=-1)
    assert torch.allclose(SCORERS[scoring](frame, history), expected)
    assert prune_frames(frame, history, 0.5, scoring=scoring, coverage=0.5).shape == (1, 4)


def test_motion_needs_a_grid_that_holds_the_tokens():
    with pytest.raises(ConfigError, match="not a square grid"):
        prune_frames(torch.randn(2, 12, 4), PrunerHistory(), 0.5, scoring="motion")
    with pytest.raises(ConfigError, match="3x5"):
        prune_frames(torch.randn(2, 12, 4), PrunerHistory(), 0.5, scoring="motion", grid=(3, 5))
    assert prune_frames(torch.randn(2, 12, 4), PrunerHistory(), 0.5, scoring="motion", grid=(3, 4)).shape == (2, 6)


def test_scorers_that_need_no_per_position_state_keep_none():
    history = PrunerHistory()
    prune_frames(torch.randn(3, 16, 8), history, 0.5, scoring="gaussian")
    assert history.previous is None and history.memory is None and history.last_kept is None
