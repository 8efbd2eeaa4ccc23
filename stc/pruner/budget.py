"""A causal adaptive budget: frames that changed more get more tokens, repeated frames fewer, as
a token bucket. Every frame adds k = round(keep_ratio · n) tokens, the fixed budget's count; a
frame takes what its change asks for, at most what the bucket holds; the bucket keeps at most
min(frames, BANK_FRAMES · n) tokens saved. So the stream never spends more than the fixed budget
(tokens given ≤ k · frames at every frame), its running mean stays within one token below k, and
however long the stream it is at most one frame's worth of tokens behind. Pure functions; STCConfig.pruner_budget="adaptive" runs them through
`stc.pruner.keep_positions`, one BudgetState per stream (STCState's `Stream.budget`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from stc.pruner.history import PrunerHistory, precise
from stc.pruner.scorers import previous_frames
from stc.pruner.select import keep_count, select_tokens

BANK_FRAMES = 1  # the tokens a stream may save or borrow: at most this many frames' worth


@dataclass
class BudgetState:
    """What the budget remembers of one stream: frames budgeted, tokens given, and the sum and
    count of the frame changes seen (frames with a previous frame)."""

    frames: int = 0
    spent: int = 0
    change_sum: float = 0.0
    changed_frames: int = 0


def frame_change(tokens: Tensor, history: PrunerHistory) -> Tensor:
    """Mean over tokens of 1 − cos(z, the same position of the previous frame), per frame [F];
    NaN for a frame with no previous frame (the history's last frame comes before the first)."""
    z = precise(tokens)
    change = (1.0 - F.cosine_similarity(z, previous_frames(z, history), dim=-1)).mean(dim=-1)
    if history.last_frame(z.shape[1]) is None:
        change[0] = math.nan
    return change


def adaptive_counts(change: list[float], tokens: int, keep_ratio: float, state: BudgetState,
                    floor: float = 0.0) -> list[int]:
    """Tokens to keep per frame for consecutive frames with frame changes `change` (NaN: none),
    updating `state`. With k = `keep_count(n, keep_ratio)` (what the fixed budget keeps), each
    frame wants k × (its change / the mean change so far, the frame included; 1 without a change
    or when the mean is 0), at least round(`floor` × k), clamped to [1, n] and to what keeps
    k · frames − min(frames, BANK_FRAMES · n) ≤ tokens given ≤ k · frames (the bucket: never in
    debt, never more than that saved; these bounds win over the floor)."""
    mean_keep = keep_count(tokens, keep_ratio)
    least = round(floor * mean_keep)
    counts = []
    for value in change:
        weight = 1.0
        if not math.isnan(value):
            state.change_sum += value
            state.changed_frames += 1
            mean = state.change_sum / state.changed_frames
            weight = value / mean if mean > 0 else 1.0
        state.frames += 1
        slack = min(state.frames, BANK_FRAMES * tokens)
        held = mean_keep * state.frames - state.spent  # the bucket, this frame's k included (>= k)
        low, high = max(1, held - slack), min(tokens, held)
        count = min(high, max(low, least, round(mean_keep * weight)))
        state.spent += count
        counts.append(count)
    return counts


def select_counts(scores: Tensor, counts: list[int]) -> list[Tensor]:
    """Per frame f, the positions of its counts[f] highest scores [counts[f]], in original order."""
    return [select_tokens(frame.unsqueeze(0), count)[0] for frame, count in zip(scores, counts)]
