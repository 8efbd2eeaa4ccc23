"""VisionZip: dominant (most attended) tokens plus merged contextual tokens, and
`attention_received`, the attention each token receives in a vision-encoder layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.peers.base import FrameSelector, Option
from stc.peers.rules import gathered, highest
from stc.validation import is_number


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
    options = {"contextual_share": Option(10 / 64, lambda v: is_number(v) and 0.0 <= v < 1.0, "a number in [0, 1)")}
    needs = frozenset({"attention"})

    def select_frame(self, tokens, context, t):
        keep = self.budget(len(tokens))
        contextual = min(keep - 1, round(keep * self.settings["contextual_share"]))
        return visionzip_frame(tokens, context.attention.to(tokens.device), keep, contextual)


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
