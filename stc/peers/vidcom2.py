"""VidCom2: keep the tokens least similar to the running video centre and to their frame's
centre, with its per-chunk frame allocation as an option."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.peers.base import Option, Selection, Selector
from stc.peers.rules import lowest
from stc.pruner import GAUSSIAN_CHANNEL_SHARE, gaussian_similarity
from stc.validation import is_number


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
        "temperature": Option(0.01, lambda v: is_number(v) and v > 0, "a number > 0"),
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
