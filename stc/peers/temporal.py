"""Temporal-redundancy selectors: TimeChat-Online's DTD, EVS, DyCoke's TTM (each frame against
an earlier frame of its stream), and `pixel_cells`, EVS's pixels on the token grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.peers.base import FrameSelector, Option
from stc.peers.rules import gathered, highest, kept_or_best, lowest, same_position_similarity, uniform_positions
from stc.validation import is_int, is_number


class TimeChatSelector(FrameSelector):
    """TimeChat-Online's Differential Token Drop (DTD).

    Source: Yao et al., "TimeChat-Online: 80% Visual Tokens are Naturally Redundant in Streaming
    Videos" (arXiv 2504.17343); github.com/yaolinli/TimeChat-Online (`token_drop`, method
    "feature", in qwen2_5_vl/modeling_qwen2_5_vl_DTD.py).
    Rule: each token is compared (cosine) with the token at the same position of the previous
    frame (all of its tokens, kept or not); tokens that did not change are dropped.
    Knob: threshold: None (default, budget mode: keep the k least similar tokens per frame) or a
    number in [-1, 1] (the paper's mode, 0.5 there: drop tokens with similarity > threshold, so the
    count varies per frame).
    Adaptations: budget mode; the stream's first frame keeps every token in threshold mode and k
    evenly spread ones in budget mode; a frame keeps at least one token (its least similar); the
    paper drops Qwen2.5-VL's merged tokens inside the LLM input, here any adapter's post-projector
    tokens are used (for Qwen-VL a "frame" is a temporal slice of two frames).
    """

    description = "TimeChat-Online DTD: drop tokens similar to the same position in the previous frame"
    options = {"threshold": Option(None, lambda v: v is None or (is_number(v) and -1.0 <= v <= 1.0),
                                   "None (budget mode) or a number in [-1, 1]")}

    def __init__(self, config, stream=0):
        super().__init__(config, stream)
        self.previous: Tensor | None = None

    def select_frame(self, tokens, context, t):
        previous, self.previous = self.previous, tokens
        threshold = self.settings["threshold"]
        if previous is None:
            if threshold is None:
                return gathered(tokens, uniform_positions(len(tokens), self.budget(len(tokens)), tokens.device))
            return gathered(tokens, torch.arange(len(tokens), device=tokens.device))
        similarity = same_position_similarity(tokens, previous)
        if threshold is None:
            return gathered(tokens, lowest(similarity, self.budget(len(tokens))))
        return gathered(tokens, kept_or_best(similarity <= threshold, -similarity))


class EVSSelector(FrameSelector):
    """EVS, Efficient Video Sampling (pixel-difference drop).

    Source: Bagrov et al., "Efficient Video Sampling: Pruning Temporally Redundant Tokens for
    Faster VLM Inference" (arXiv 2510.14624); vLLM's `vllm/multimodal/evs.py`.
    Rule: a token whose image patch is static is redundant: its score is the mean absolute
    difference of its pixels (FrameContext.pixels) to the same patch of the previous frame; the
    most changed tokens are kept.
    Knob: threshold: None (default, budget mode: keep the k most changed tokens per frame) or a
    number >= 0 (keep tokens whose difference exceeds it, so the count varies per frame).
    Adaptations: vLLM's EVS scores embeddings (1 - cosine to the previous frame; that rule is
    `timechat` here) against one video-wide budget with the first frame kept whole; a stream has no
    video-wide view, so the budget is per frame, and the score is in pixel space (static patches);
    the first frame keeps every token (threshold mode) or k evenly spread ones (budget mode); a
    frame keeps at least one token. Pixels are normalised model inputs, on each model's token grid
    (the adapter averages them per token cell).
    """

    description = "EVS: drop tokens whose pixels did not change since the previous frame"
    options = {"threshold": Option(None, lambda v: v is None or (is_number(v) and v >= 0.0),
                                   "None (budget mode) or a number >= 0")}
    needs = frozenset({"pixels"})

    def __init__(self, config, stream=0):
        super().__init__(config, stream)
        self.previous: Tensor | None = None

    def select_frame(self, tokens, context, t):
        pixels = context.pixels.float()
        previous, self.previous = self.previous, pixels
        threshold = self.settings["threshold"]
        if previous is None:
            if threshold is None:
                return gathered(tokens, uniform_positions(len(tokens), self.budget(len(tokens)), tokens.device))
            return gathered(tokens, torch.arange(len(tokens), device=tokens.device))
        change = (pixels - previous).abs().mean(dim=-1).to(tokens.device)
        if threshold is None:
            return gathered(tokens, highest(change, self.budget(len(tokens))))
        return gathered(tokens, kept_or_best(change > threshold, change))


class DyCokeSelector(FrameSelector):
    """DyCoke's temporal token merging (TTM).

    Source: Tao et al., "DyCoke: Dynamic Compression of Tokens for Fast Video Large Language
    Models" (CVPR 2025); github.com/KD-TAO/DyCoke (`dycole_ttm` in llava/model/llava_arch.py).
    Rule: frames form windows of `window` frames whose first frame is the pivot; an odd frame of
    the window is compared with the frame before it, an even one with the pivot (window 4: 1->0,
    2->0, 3->2). Each token is compared (cosine) with the token at the same position of that
    reference, and the most similar ones are dropped: they are merged into the reference's token,
    which stays (as in the authors' code, the reference token is not modified).
    Knobs: window (4, an integer >= 2); pivot_full: False (default, budget mode: every frame keeps
    k tokens, a pivot keeps those least similar to the previous window's pivot, the stream's first
    frame k evenly spread ones) or True (the paper's split: pivots keep all their tokens, the
    other frames keep k, so a window keeps more than k per frame on average).
    Adaptations: windows are aligned to the stream's frame index and only look back, so a frame's
    selection is final when it arrives; budget mode; DyCoke's second stage (dynamic pruning of the
    KV cache while decoding) is not part of this selector.
    """

    description = "DyCoke TTM: drop tokens similar to the same position of the window's pivot / previous frame"
    options = {
        "window": Option(4, lambda v: is_int(v) and v >= 2, "an integer >= 2"),
        "pivot_full": Option(False, lambda v: isinstance(v, bool), "True or False"),
    }

    def __init__(self, config, stream=0):
        super().__init__(config, stream)
        self.pivot: Tensor | None = None
        self.previous: Tensor | None = None

    def select_frame(self, tokens, context, t):
        offset = t % self.settings["window"]
        if offset == 0:
            reference, self.pivot = self.pivot, tokens
        else:
            reference = self.previous if offset % 2 else self.pivot
        self.previous = tokens
        if offset == 0 and self.settings["pivot_full"]:
            return gathered(tokens, torch.arange(len(tokens), device=tokens.device))
        keep = self.budget(len(tokens))
        if reference is None:  # the stream's first frame in budget mode
            return gathered(tokens, uniform_positions(len(tokens), keep, tokens.device))
        return gathered(tokens, lowest(same_position_similarity(tokens, reference), keep))


def pixel_cells(frames: Tensor, grid: tuple[int, int], cell: int = 4) -> Tensor:
    """Frames [F, C, H, W] -> [F, rows * cols, C * cell * cell]: each token's image area of a
    rows x cols token grid, averaged down to cell x cell pixels (EVS's pixels on the token grid)."""
    rows, cols = grid
    small = F.adaptive_avg_pool2d(frames.float(), (rows * cell, cols * cell))
    cells = small.view(frames.shape[0], frames.shape[1], rows, cell, cols, cell).permute(0, 2, 4, 1, 3, 5)
    return cells.reshape(frames.shape[0], rows * cols, -1)
