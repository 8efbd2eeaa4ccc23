"""The Pruner at its defaults selects exactly as before the candidate scorers were added: the
released scorer's scores and a plain top-k, whatever the other scorers' knobs say."""

import pytest
import torch

from stc.config import STCConfig
from stc.pruner import PrunerHistory, dual_anchor_scores, gaussian_scores, keep_count, prune_frames, select_tokens
from stc.state import STCState


def before(tokens, scoring, alpha=0.5):
    """The selection as stc.pruner made it before: scores of all frames, push the means, top-k."""
    history = PrunerHistory()
    out = []
    for chunk in tokens.split(3):
        scores = gaussian_scores(chunk, history) if scoring == "gaussian" else dual_anchor_scores(chunk, history, alpha)
        history.push(chunk.float().mean(dim=1))
        out.append(select_tokens(scores, keep_count(chunk.shape[1], 0.3)))
    return torch.cat(out)


@pytest.mark.parametrize("config", [
    STCConfig(),
    STCConfig(novelty_weight=0.9, motion_radius=3),  # knobs of scorers not chosen change nothing
    STCConfig(pruner_scoring="dual_anchor", alpha=0.2),
])
def test_the_released_and_paper_scorers_select_bit_for_bit_as_before(config):
    torch.manual_seed(0)
    tokens = torch.randn(2, 9, 196, 32)
    state = STCState(config)
    state.streaming = True
    kept = torch.cat([state.prune(chunk) for chunk in tokens.split(3, dim=1)], dim=1)
    for row in range(2):
        assert torch.equal(kept[row], before(tokens[row], config.pruner_scoring, config.alpha))


def test_default_knobs_are_what_prune_frames_assumes():
    config = STCConfig()
    assert config.pruner_knobs == {"coverage": 0.0}
    assert STCConfig(pruner_scoring="change_novelty").pruner_knobs == {"novelty_weight": 0.5, "coverage": 0.0}
    assert STCConfig(pruner_scoring="dual_anchor").pruner_knobs == {"alpha": 0.5, "coverage": 0.0}


@pytest.mark.parametrize("scoring", ["positional", "change_novelty", "motion"])
def test_state_passes_each_scorers_knobs(scoring):
    torch.manual_seed(1)
    tokens = torch.randn(1, 4, 196, 16)
    config = STCConfig(pruner_scoring=scoring, novelty_weight=0.8, motion_radius=2, coverage=0.3, keep_ratio=0.2)
    alone = prune_frames(tokens[0], PrunerHistory(), 0.2, scoring=scoring, novelty_weight=0.8, motion_radius=2,
                         coverage=0.3)
    assert torch.equal(STCState(config).prune(tokens)[0], alone)
