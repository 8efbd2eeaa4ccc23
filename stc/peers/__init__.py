"""Peer methods: token reducers of other papers, re-implemented behind STC's two plug-in points.

Pure tensor code (no transformers import). A peer method is selected by name with a
`MethodConfig` (its knobs are validated there) and plugs in where STC's parts do:

- post-encoder selector (where STC-Pruner sits): one `Selector` per stream receives the stream's
  frames' tokens [F, n, D] in time order, plus a `FrameContext` for rules that read more than the
  tokens, and returns a `Selection`: per frame, the kept original positions (ascending) and the
  tokens the LLM gets (a gather, or, for merging rules, merged vectors placed at the position of a
  representative kept token). Per-frame counts may differ.
- ViT-side reducer (where STC-Cacher sits): `TokenMerging`, ToMe inside the vision encoder; the
  model adapter runs the encoder layers and calls it.

All selectors are causal: frame t's selection reads frames <= t of its stream only (history is
carried between calls in the selector) unless an option says otherwise (VidCom2's "chunk"
allocation). Budget mode is the default everywhere: k = round(n * keep_ratio) tokens per frame
(at least 1), so methods compare at equal LLM budgets; where a paper uses a threshold or a fixed
split instead, that mode is an option, and budget mode is listed as an adaptation.

The `oracle` is no method but a reference ceiling: it reads the scene's ground truth (which cells
objects cover) through the `ground_truth` hook, which only `stc eval synthetic` sets.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.pruner import GAUSSIAN_CHANNEL_SHARE, gaussian_similarity, keep_count

# -- Interface --------------------------------------------------------------------------------


@dataclass
class FrameContext:
    """What some selectors read besides the tokens, for the same frames (first axis) of one stream.

    pixels:    [F, n, P] the pixel values of each token's image area (EVS).
    attention: [F, n] attention each token received in the vision encoder's last layer, on the
               token grid (VisionZip).
    """

    pixels: Tensor | None = None
    attention: Tensor | None = None

    def frame(self, f: int) -> FrameContext:
        return FrameContext(*(None if t is None else t[f] for t in (self.pixels, self.attention)))


@dataclass
class Selection:
    """The LLM's tokens of consecutive frames of one stream: per frame, the kept original positions
    [k_i] (ascending) and the tokens [k_i, D] placed there."""

    positions: list[Tensor]
    tokens: list[Tensor]

    @property
    def kept(self) -> int:
        return sum(len(p) for p in self.positions)


@dataclass(frozen=True)
class Option:
    """A knob of a peer method: its default and what values it accepts."""

    default: object
    accepts: Callable[[object], bool]
    rule: str  # the accepted values, in words


class Selector(abc.ABC):
    """Post-encoder token selection of one stream; subclasses hold the rule and its history."""

    description = ""
    options: dict[str, Option] = {}
    needs: frozenset[str] = frozenset()  # FrameContext fields the rule reads
    vit_side = False  # True when the method also works inside the vision encoder
    needs_ground_truth = False  # True when the rule reads the scene (`ground_truth`), not only the video

    def __init__(self, config: MethodConfig, stream: int = 0):
        self.keep_ratio = config.keep_ratio
        self.settings = config.options
        self.stream = stream
        self.frames_seen = 0

    def budget(self, tokens: int) -> int:
        return keep_count(tokens, self.keep_ratio)

    def select(self, tokens: Tensor, context: FrameContext | None = None) -> Selection:
        """Select among consecutive frames [F, n, D] of the stream and remember them."""
        context = FrameContext() if context is None else context
        missing = sorted(name for name in self.needs if getattr(context, name) is None)
        if missing:
            raise ValueError(f"{type(self).__name__} needs FrameContext.{', '.join(missing)}")
        selection = self.select_frames(tokens, context)
        self.frames_seen += tokens.shape[0]
        return selection

    @abc.abstractmethod
    def select_frames(self, tokens: Tensor, context: FrameContext) -> Selection:
        """The rule on frames [F, n, D] that follow the stream's `frames_seen` frames."""


class FrameSelector(Selector):
    """A selector whose rule takes one frame at a time (its history carries the past frames)."""

    def select_frames(self, tokens: Tensor, context: FrameContext) -> Selection:
        positions, outputs = [], []
        for f in range(tokens.shape[0]):
            kept, out = self.select_frame(tokens[f], context.frame(f), self.frames_seen + f)
            positions.append(kept)
            outputs.append(out)
        return Selection(positions, outputs)

    @abc.abstractmethod
    def select_frame(self, tokens: Tensor, context: FrameContext, t: int) -> tuple[Tensor, Tensor]:
        """Frame t of the stream (tokens [n, D]) -> kept positions [k] ascending, tokens [k, D]."""


# -- Shared rules -----------------------------------------------------------------------------


def uniform_positions(tokens: int, keep: int, device=None) -> Tensor:
    """`keep` positions spread evenly over 0..tokens-1: floor((i + 1/2) * tokens / keep)."""
    return (torch.arange(keep, device=device) * 2 + 1) * tokens // (2 * keep)


def lowest(scores: Tensor, keep: int) -> Tensor:
    """Positions of the `keep` lowest scores, ascending."""
    return torch.topk(scores, keep, largest=False, sorted=False).indices.sort().values


def highest(scores: Tensor, keep: int) -> Tensor:
    """Positions of the `keep` highest scores, ascending."""
    return torch.topk(scores, keep, sorted=False).indices.sort().values


def gathered(tokens: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    return positions, tokens[positions]


def same_position_similarity(tokens: Tensor, reference: Tensor) -> Tensor:
    """Cosine similarity [n] of each token [n, D] to the token at the same position of a
    reference frame [n, D] (float32)."""
    return F.cosine_similarity(tokens.float(), reference.float(), dim=-1)


def kept_or_best(keep: Tensor, scores: Tensor) -> Tensor:
    """Positions where `keep` [n] holds, or the highest score's when none does (a frame keeps >= 1)."""
    positions = keep.nonzero().flatten()
    return positions if len(positions) else scores.argmax().view(1)


# -- Sanity baselines -------------------------------------------------------------------------


class UniformSelector(FrameSelector):
    """Uniform keep (sanity baseline): k positions spread evenly over the frame's tokens in
    raster order, floor((i + 1/2) * n / k), the same in every frame. No knobs; no history."""

    description = "keep k tokens evenly spread over each frame (sanity baseline)"

    def select_frame(self, tokens, context, t):
        return gathered(tokens, uniform_positions(len(tokens), self.budget(len(tokens)), tokens.device))


class RandomSelector(FrameSelector):
    """Random keep (sanity baseline): k positions drawn without replacement. Deterministic: frame
    t of stream s uses a generator seeded with seed * 1_000_003 + s * 10_007 + t.
    Knob: seed (0)."""

    description = "keep k random tokens per frame, seeded per stream and frame (sanity baseline)"
    options = {"seed": Option(0, lambda v: _is_int(v) and v >= 0, "an integer >= 0")}

    def draw(self, tokens: int, t: int) -> Tensor:
        """Frame t's random order of its positions 0..tokens-1 (CPU)."""
        generator = torch.Generator().manual_seed(self.settings["seed"] * 1_000_003 + self.stream * 10_007 + t)
        return torch.randperm(tokens, generator=generator)

    def select_frame(self, tokens, context, t):
        draw = self.draw(len(tokens), t)[: self.budget(len(tokens))]
        return gathered(tokens, draw.sort().values.to(tokens.device))


# -- Reference ceiling: the oracle ------------------------------------------------------------

ObjectCells = Callable[[int, int, int], Tensor]  # (stream, frame t, tokens n) -> [n] bool: on an object
_GROUND_TRUTH: ContextVar[ObjectCells | None] = ContextVar("stc_ground_truth", default=None)


@contextmanager
def ground_truth(cells: ObjectCells) -> Iterator[None]:
    """The oracle's hook: inside this block, `cells(stream, t, n)` tells the oracle which of frame
    t's n tokens lie on objects. Only an evaluation that knows the scene can supply it (`stc eval
    synthetic`, which follows the frames it streams); it is set before the frames arrive."""
    token = _GROUND_TRUTH.set(cells)
    try:
        yield
    finally:
        _GROUND_TRUTH.reset(token)


class OracleSelector(RandomSelector):
    """Oracle (reference ceiling, not a causal method): keeps the tokens whose cells an object
    covers first, then fills the budget k = round(n * keep_ratio) with random other tokens; with
    more object cells than k, k of them at random. The random order is random's (same seed rule),
    so on a frame without objects the oracle keeps what random keeps. The object cells are the
    scene's ground truth, read through `ground_truth` (a ValueError outside it): the ceiling for
    any selector at that budget. Knob: seed (0)."""

    description = "keep the tokens on objects first (scene ground truth), fill the budget at random (ceiling)"
    needs_ground_truth = True

    def select_frame(self, tokens, context, t):
        cells = _GROUND_TRUTH.get()
        if cells is None:
            raise ValueError("the oracle needs the scene's ground truth (stc.peers.ground_truth): "
                             "only `stc eval synthetic` has it")
        on_object = torch.as_tensor(cells(self.stream, t, len(tokens)), dtype=torch.bool).cpu()
        if on_object.shape != (len(tokens),):
            raise ValueError(f"the ground truth of frame {t} marks {tuple(on_object.shape)} cells for {len(tokens)} tokens")
        draw = self.draw(len(tokens), t)
        order = draw[on_object[draw].long().argsort(descending=True, stable=True)]  # object cells first
        return gathered(tokens, order[: self.budget(len(tokens))].sort().values.to(tokens.device))


# -- Temporal redundancy: TimeChat-Online, EVS, DyCoke ----------------------------------------


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
    options = {"threshold": Option(None, lambda v: v is None or (_is_number(v) and -1.0 <= v <= 1.0),
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
    options = {"threshold": Option(None, lambda v: v is None or (_is_number(v) and v >= 0.0),
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
        "window": Option(4, lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
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


# -- VidCom2 ----------------------------------------------------------------------------------


def chunk_budgets(uniqueness: Tensor, keep_ratio: float, tokens: int, temperature: float) -> list[int]:
    """VidCom2's frame allocation: scale_f = keep_ratio * (1 + p_f - mean(p)), with
    p = softmax((u - max u) / temperature), capped at 1; k_f = max(1, round(scale_f * n))."""
    probs = torch.softmax((uniqueness - uniqueness.max()) / temperature, dim=0)
    scales = (keep_ratio * (1 + probs - probs.mean())).clamp(max=1.0)
    return (scales * tokens).round().long().clamp(min=1).tolist()


class VidCom2Selector(Selector):
    """VidCom2 (Video Compression Commander).

    Source: Liu et al., "Video Compression Commander: Plug-and-Play Inference Acceleration for
    Video Large Language Models" (EMNLP 2025); github.com/xuyang-liu16/VidCom2
    (llava/model/vidcom2.py).
    Rule: on the 50% lowest-variance channels, L2-normalised tokens are compared with a
    multi-bandwidth Gaussian kernel (sigma^2 in 1/8 .. 2) to the video centre (mean of all tokens)
    and to their frame's centre; the k tokens least similar to both (sum of the two) are kept.
    Frame allocation (VidCom2's frame compression adjustment): frames less similar to the video
    centre (uniqueness u_f = -mean kernel value) get more tokens (`chunk_budgets`).
    Knobs: allocation: "frame" (default: every frame keeps k) or "chunk" (VidCom2's allocation over
    the frames of each selection call, i.e. each ingestion chunk); temperature (0.01) of that
    allocation.
    Adaptations (causal, as STC's paper evaluated it): the video centre of frame t is the mean of
    the stream's frames <= t (VidCom2 uses the whole video); the channels are chosen once per
    stream, on its first frame (VidCom2 chooses them over the whole video); with allocation
    "chunk" a frame's budget depends on the other frames of its chunk (causal per chunk, not per
    frame, and dependent on how frames are batched). STC-Pruner's "gaussian" scorer (the STC
    release) descends from this rule.
    """

    description = "VidCom2: keep tokens least similar to the running video centre and their frame's centre"
    options = {
        "allocation": Option("frame", lambda v: v in ("frame", "chunk"), '"frame" or "chunk"'),
        "temperature": Option(0.01, lambda v: _is_number(v) and v > 0, "a number > 0"),
    }

    def __init__(self, config, stream=0):
        super().__init__(config, stream)
        self.channels: Tensor | None = None
        self.centre_sum: Tensor | None = None  # sum of the frame centres so far

    def normalised(self, tokens: Tensor) -> Tensor:
        """L2-normalised tokens [F, n, c] on the stream's low-variance channels."""
        z = tokens.float()
        if self.channels is None:
            count = max(1, int(z.shape[-1] * GAUSSIAN_CHANNEL_SHARE))
            self.channels = torch.topk(z[0].var(dim=0, unbiased=False), count, largest=False).indices.sort().values
        return F.normalize(z[..., self.channels], dim=-1)

    def select_frames(self, tokens, context):
        frames, n, _ = tokens.shape
        z = self.normalised(tokens)
        frame_centre = z.mean(dim=1)  # [F, c]
        running = frame_centre.cumsum(dim=0) + (0 if self.centre_sum is None else self.centre_sum)
        video_centre = running / (self.frames_seen + torch.arange(1, frames + 1, device=z.device)).unsqueeze(-1)
        self.centre_sum = running[-1]
        video_similarity = gaussian_similarity(z, video_centre.unsqueeze(1))  # [F, n]
        scores = video_similarity + gaussian_similarity(z, frame_centre.unsqueeze(1))
        if self.settings["allocation"] == "chunk":
            budgets = chunk_budgets(-video_similarity.mean(dim=1), self.keep_ratio, n, self.settings["temperature"])
        else:
            budgets = [self.budget(n)] * frames
        kept = [lowest(scores[f], budgets[f]) for f in range(frames)]
        return Selection(kept, [tokens[f, kept[f]] for f in range(frames)])


# -- VisionZip --------------------------------------------------------------------------------


def visionzip_frame(tokens: Tensor, attention: Tensor, keep: int, contextual: int) -> tuple[Tensor, Tensor]:
    """VisionZip on one frame: the keep - contextual most attended tokens are kept (dominant);
    the others are merged into `contextual` tokens. Returns positions (ascending) and tokens."""
    dominant = highest(attention.float(), keep - contextual)
    rest = torch.ones(len(tokens), dtype=torch.bool, device=tokens.device)
    rest[dominant] = False
    rest = rest.nonzero().flatten()
    if contextual == 0:
        return gathered(tokens, dominant)
    step = max(1, len(rest) // contextual)
    is_target = torch.zeros(len(rest), dtype=torch.bool, device=tokens.device)
    is_target[torch.arange(0, len(rest), step, device=tokens.device)[:contextual]] = True
    targets, others = rest[is_target], rest[~is_target]
    z = F.normalize(tokens.float(), dim=-1)
    joins = (z[others] @ z[targets].T).argmax(dim=-1)  # most similar target of each other token
    sums = tokens[targets].float().index_add(0, joins, tokens[others].float())
    ones = torch.ones(len(rest), device=tokens.device)
    counts = ones[: len(targets)].index_add(0, joins, ones[: len(others)])
    merged = (sums / counts.unsqueeze(-1)).to(tokens.dtype)
    positions = torch.cat([dominant, targets])
    outputs = torch.cat([tokens[dominant], merged])
    order = positions.argsort()
    return positions[order], outputs[order]


class VisionZipSelector(FrameSelector):
    """VisionZip (dominant + contextual tokens).

    Source: Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models"
    (CVPR 2025); github.com/dvlab-research/VisionZip (visionzip/clip_encoder.py).
    Rule: dominant tokens are the most attended ones in the vision encoder; the other tokens are
    merged into contextual tokens: targets are taken evenly among them (every
    (remaining // contextual)-th), each other token joins its most similar target (cosine), and a
    contextual token is the mean of its target and the tokens that joined it.
    Knob: contextual_share: share of the k tokens that are contextual (0.15625, VisionZip's 10 of
    64); dominant = k - round(k * contextual_share).
    Adaptations: SigLIP has no CLS token, so a token's attention is the attention it receives in
    the encoder's last layer, averaged over heads and queries (computed by the adapter from that
    layer's queries and keys and pooled to the LLM token grid as the model pools features); the
    similarity uses the post-projector tokens (VisionZip uses the last layer's keys, which do not
    exist on the pooled grid); a contextual token sits at its target's position. Per frame, so
    causal. LLaVA-OneVision only (the adapter provides the attention).
    """

    description = "VisionZip: most-attended (dominant) tokens + merged contextual tokens"
    options = {"contextual_share": Option(10 / 64, lambda v: _is_number(v) and 0.0 <= v < 1.0, "a number in [0, 1)")}
    needs = frozenset({"attention"})

    def select_frame(self, tokens, context, t):
        keep = self.budget(len(tokens))
        contextual = min(keep - 1, round(keep * self.settings["contextual_share"]))
        return visionzip_frame(tokens, context.attention.to(tokens.device), keep, contextual)


# -- ToMe -------------------------------------------------------------------------------------


def bipartite_soft_matching(metric: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """ToMe's matching on metric [B, T, C]: every token at an even position (set A) picks its most
    similar (cosine) token at an odd position (set B); the r A-tokens with the most similar picks
    merge into them (r is capped at T // 2). Returns the assignment [B, T] (each token's index
    after merging; survivors keep their order) and the survivors [B, T] (bool)."""
    batch, count, _ = metric.shape
    r = min(r, count // 2)
    m = F.normalize(metric.float(), dim=-1)
    best, partner = (m[:, 0::2] @ m[:, 1::2].transpose(1, 2)).max(dim=-1)  # [B, |A|]
    merged = best.argsort(dim=-1, descending=True)[:, :r]
    survivors = torch.ones(batch, count, dtype=torch.bool, device=metric.device)
    survivors[:, 0::2] = survivors[:, 0::2].scatter(1, merged, False)
    rank = survivors.long().cumsum(dim=1) - 1
    assignment = rank.clone()
    assignment[:, 0::2] = torch.where(survivors[:, 0::2], rank[:, 0::2], rank.gather(1, 2 * partner + 1))
    return assignment, survivors


def merge_weighted(x: Tensor, size: Tensor, assignment: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Size-weighted means of the tokens x [B, T, C] (sizes [B, T, 1], float32) that share an
    assignment [B, T] -> tokens [B, count, C] and their sizes [B, count, 1]."""
    index = assignment.unsqueeze(-1)
    totals = x.new_zeros(x.shape[0], count, x.shape[-1], dtype=torch.float32)
    totals.scatter_add_(1, index.expand(-1, -1, x.shape[-1]), x.float() * size)
    sizes = size.new_zeros(x.shape[0], count, 1).scatter_add_(1, index, size)
    return (totals / sizes).to(x.dtype), sizes


def merge_to_budget(tokens: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """Bipartite soft matching on one frame's tokens [n, D] (the tokens are the metric), in rounds
    of at most half the tokens, until `keep` remain. Returns the survivors' original positions
    (ascending) and the size-weighted merged tokens."""
    x = tokens[None]
    size = torch.ones(1, len(tokens), 1, device=tokens.device)
    positions = torch.arange(len(tokens), device=tokens.device)
    while x.shape[1] > keep:
        assignment, survivors = bipartite_soft_matching(x, x.shape[1] - keep)
        x, size = merge_weighted(x, size, assignment, int(survivors.sum()))
        positions = positions[survivors[0]]
    return positions, x[0]


class TokenMerging:
    """ToMe inside a vision encoder, for one encoder call (rows = frames).

    After each layer's attention, `merge` merges r tokens by bipartite soft matching on the keys
    (mean over heads), as size-weighted means; `attention_bias` is ToMe's proportional attention
    (log size added to every query's logits for that key); after the last layer, `unmerge` copies
    each merged token back to every position it absorbed, so that the projector and LLaVA's 2D
    pooling see the full grid (as tomesd does). r: tokens merged per layer (None: T // (2 * layers),
    at least 1: about half the tokens merged by the last layer), at most half the current tokens.
    """

    def __init__(self, r: int | None, layers: int, tokens: int):
        self.r = max(1, tokens // (2 * layers)) if r is None else r
        self.size: Tensor | None = None  # [B, T_l, 1] float32: original tokens per current token
        self.source: Tensor | None = None  # [B, T]: current index of every original token
        self.layer_tokens: list[int] = []  # tokens per row entering each layer

    def attention_bias(self, x: Tensor) -> Tensor:
        """[B, 1, 1, T_l] additive attention bias for tokens x [B, T_l, C] (zeros before merging)."""
        if self.size is None:
            self.size = torch.ones(x.shape[0], x.shape[1], 1, device=x.device)
            self.source = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        self.layer_tokens.append(x.shape[1])
        return self.size.log().view(x.shape[0], 1, 1, -1).to(x.dtype)

    def merge(self, x: Tensor, metric: Tensor) -> Tensor:
        """Merge r tokens of x [B, T_l, C] using metric [B, T_l, c] (the layer's keys)."""
        if self.r == 0 or x.shape[1] < 2:
            return x
        assignment, survivors = bipartite_soft_matching(metric, self.r)
        x, self.size = merge_weighted(x, self.size, assignment, int(survivors[0].sum()))
        self.source = assignment.gather(1, self.source)
        return x

    def unmerge(self, x: Tensor) -> Tensor:
        """Tokens [B, T_l, C] -> [B, T, C]: every original position gets its merged token."""
        return x.gather(1, self.source.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

    @property
    def mean_tokens(self) -> float:
        """Tokens per row the encoder layers processed, averaged over layers."""
        return sum(self.layer_tokens) / len(self.layer_tokens) if self.layer_tokens else 0.0


class ToMeSelector(FrameSelector):
    """ToMe (token merging), second stage.

    Source: Bolya et al., "Token Merging: Your ViT But Faster" (ICLR 2023);
    github.com/facebookresearch/ToMe (tome/merge.py, tome/patch/timm.py).
    Rule: bipartite soft matching: split the tokens alternately into sets A and B, join every A
    token to its most similar B token, merge the r most similar pairs as size-weighted means.
    The first stage, `TokenMerging`, runs inside SigLIP (keys as the metric, proportional
    attention, r per layer) and un-merges before the projector; this selector then merges each
    frame's pooled tokens down to the budget k with the same rule (tokens as the metric), so that
    ToMe competes at the same LLM budget; a merged token sits at its surviving token's position.
    Knob: r, tokens merged per ViT layer (None, the default: max(1, T // (2 * layers)); 0: none).
    Adaptations: un-merging before the projector (LLaVA-OneVision pools a 2D grid after it); the
    budget stage. LLaVA-OneVision only: Qwen-VL's windowed ViT would need merging inside each
    attention window and a merger that pools fixed 2x2 groups.
    """

    description = "ToMe: bipartite token merging inside SigLIP, then down to the budget after pooling"
    options = {"r": Option(None, lambda v: v is None or (_is_int(v) and v >= 0), "None or an integer >= 0")}
    vit_side = True

    def select_frame(self, tokens, context, t):
        return merge_to_budget(tokens, self.budget(len(tokens)))


def attention_received(queries: Tensor, keys: Tensor, heads: int, scale: float) -> Tensor:
    """Attention each token receives [B, T] in one layer: softmax(q k^T * scale) per head from
    queries and keys [B, T, C], averaged over heads and queries (float32; one head at a time)."""
    batch, count, width = queries.shape
    q = queries.view(batch, count, heads, -1).transpose(1, 2).float()
    k = keys.view(batch, count, heads, -1).transpose(1, 2).float()
    received = queries.new_zeros(batch, count, dtype=torch.float32)
    for h in range(heads):
        received += torch.softmax(q[:, h] @ k[:, h].transpose(1, 2) * scale, dim=-1).mean(dim=1)
    return received / heads


def pixel_cells(frames: Tensor, grid: tuple[int, int], cell: int = 4) -> Tensor:
    """Frames [F, C, H, W] -> [F, rows * cols, C * cell * cell]: each token's image area of a
    rows x cols token grid, averaged down to cell x cell pixels (EVS's pixels on the token grid)."""
    rows, cols = grid
    small = F.adaptive_avg_pool2d(frames.float(), (rows * cell, cols * cell))
    cells = small.view(frames.shape[0], frames.shape[1], rows, cell, cols, cell).permute(0, 2, 4, 1, 3, 5)
    return cells.reshape(frames.shape[0], rows * cols, -1)


# -- Registry and config ----------------------------------------------------------------------

PEER_METHODS: dict[str, type[Selector]] = {
    "tome": ToMeSelector,
    "visionzip": VisionZipSelector,
    "vidcom2": VidCom2Selector,
    "dycoke": DyCokeSelector,
    "timechat": TimeChatSelector,
    "evs": EVSSelector,
    "uniform": UniformSelector,
    "random": RandomSelector,
    "oracle": OracleSelector,
}


@dataclass(frozen=True)
class MethodConfig:
    """A peer method for one patched model (`stc.patch(model, stc.MethodConfig("visionzip"))`).

    method:     a name of PEER_METHODS (see `stc.methods.METHODS`).
    keep_ratio: share of visual tokens per frame the LLM gets in budget mode, in (0, 1]:
                k = round(n * keep_ratio), at least 1.
    options:    the method's knobs (documented on its selector class); missing ones take their
                defaults, which are filled in here.
    """

    method: str
    keep_ratio: float = 0.3
    options: Mapping = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.method not in PEER_METHODS:
            raise ValueError(f"MethodConfig.method: unknown peer method {self.method!r}; choose from {', '.join(PEER_METHODS)}")
        if not _is_number(self.keep_ratio) or not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"MethodConfig.keep_ratio must be in (0, 1], got {self.keep_ratio!r}")
        if not isinstance(self.options, Mapping):
            raise ValueError(f"MethodConfig.options must be a mapping, got {type(self.options).__name__}")
        known = self.selector.options
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            choices = ", ".join(known) or "none"
            raise ValueError(f"MethodConfig.options: unknown option {unknown[0]!r} for {self.method} (options: {choices})")
        resolved = {name: self.options.get(name, option.default) for name, option in known.items()}
        for name, value in resolved.items():
            if not known[name].accepts(value):
                raise ValueError(f"MethodConfig.options[{name!r}] of {self.method} must be {known[name].rule}, got {value!r}")
        object.__setattr__(self, "options", resolved)

    @property
    def selector(self) -> type[Selector]:
        return PEER_METHODS[self.method]

    @property
    def prunes(self) -> bool:
        """Peer selectors always run (budget mode keeps k of n tokens per frame)."""
        return True

    @property
    def reuses_vit(self) -> bool:
        """Reuse of ViT work across frames is STC-Cacher's; no peer method does it."""
        return False

    def replace(self, **changes) -> MethodConfig:
        """A copy with some fields changed (validated again)."""
        values = {"method": self.method, "keep_ratio": self.keep_ratio, "options": dict(self.options)}
        values.update(changes)
        return MethodConfig(**values)

    def make_selector(self, stream: int = 0) -> Selector:
        return self.selector(self, stream)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


__all__ = [
    "FrameContext",
    "MethodConfig",
    "ObjectCells",
    "PEER_METHODS",
    "Selection",
    "FrameSelector",
    "Selector",
    "TokenMerging",
    "attention_received",
    "bipartite_soft_matching",
    "ground_truth",
    "merge_to_budget",
    "merge_weighted",
    "pixel_cells",
    "uniform_positions",
    "visionzip_frame",
]
