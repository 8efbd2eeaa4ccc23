"""Driving a Hugging Face decoder layer by layer with attention the engine controls.

The streaming engine must decide, per layer, which keys a query sees and at which positions
(sink + sliding window while ingesting, sink + retrieved frames while answering), and must keep
keys un-rotated so stored frames can be re-positioned. It does so through two public seams:

- the decoder layers are called with an identity rotary embedding (cos = 1, sin = 0), so the
  attention module hands un-rotated queries and keys to the attention function;
- an attention function registered with `AttentionInterface` ("stc_rekv") receives them together
  with the engine's per-call context, applies the model's own rotary embedding at the positions
  the engine chooses, and attends over the keys the engine supplies.

This module is the only place that calls decoder layers directly; it relies on the layer call
signature shared by transformers 5.x decoders (hidden_states, attention_mask, position_ids, the
KV cache, use_cache, position_embeddings, **kwargs), leaving the cache, whose name changed in 5.25,
at its default (none).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION_NAME = "stc_rekv"
CONTEXT_KWARG = "stc_rekv_context"


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rekv_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention function: the engine's context decides the keys; without one, plain SDPA."""
    context = kwargs.pop(CONTEXT_KWARG, None)
    if context is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    out = context.attend(module.layer_idx, query, key, value, scaling)  # [B, H, L, D]
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, _rekv_attention)


class DecoderDriver:
    """Runs a text decoder's layers with the engine's attention context.

    `rotary(x, positions)` returns the model's own (cos, sin) for `positions` [L] (or
    [rows, L] for multimodal RoPE); `apply_rotary(x, cos, sin)` rotates [B, H, L, D].
    """

    def __init__(self, language_model, lm_head, apply_rotary: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None):
        self.lm = language_model
        self.layers = language_model.layers
        self.norm = language_model.norm
        self.embed = language_model.get_input_embeddings()
        self.lm_head = lm_head
        self.config = language_model.config
        self.head_dim = getattr(self.config, "head_dim", None) or self.config.hidden_size // self.config.num_attention_heads
        self.num_layers = len(self.layers)
        self.num_kv_heads = self.config.num_key_value_heads
        self.apply_rotary = apply_rotary or (lambda x, cos, sin: x * cos + rotate_half(x) * sin)

    def rotary(self, like: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """(cos, sin) [L, D] from the model's rotary embedding for positions [rows, L]: one row
        for plain RoPE, three (temporal, height, width) for multimodal RoPE."""
        rows, length = positions.shape
        ids = positions.view(1, length) if rows == 1 else positions.view(rows, 1, length)
        cos, sin = self.lm.rotary_emb(like, ids.to(like.device))
        return cos.reshape(-1, length, cos.shape[-1])[0].to(like.dtype), sin.reshape(-1, length, sin.shape[-1])[0].to(like.dtype)

    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        """x [B, H, L, D] rotated at `positions` [rows, L]."""
        cos, sin = self.rotary(x, positions)
        return self.apply_rotary(x, cos, sin)

    @contextmanager
    def _engine_attention(self):
        saved = self.config._attn_implementation
        self.config._attn_implementation = ATTENTION_NAME
        try:
            yield
        finally:
            self.config._attn_implementation = saved

    def run(self, embeds: Tensor, context, layer_hook: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
        """Final hidden states [B, L, hidden] of `embeds` [B, L, hidden] under `context`;
        `layer_hook(i, hidden)`, when given, replaces the hidden states after decoder layer i
        (Qwen3-VL adds its DeepStack features there)."""
        ones = embeds.new_ones(1, 1, self.head_dim)
        identity = (ones, torch.zeros_like(ones))  # rotary with cos = 1, sin = 0 leaves q and k as they are
        hidden = embeds
        with self._engine_attention():
            for layer_idx, layer in enumerate(self.layers):
                out = layer(
                    hidden,
                    attention_mask=None,
                    position_ids=None,
                    use_cache=False,
                    position_embeddings=identity,
                    **{CONTEXT_KWARG: context},
                )
                hidden = out[0] if isinstance(out, tuple) else out
                if layer_hook is not None:
                    hidden = layer_hook(layer_idx, hidden)
        return self.norm(hidden)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)
