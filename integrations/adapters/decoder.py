"""Driving a Hugging Face decoder layer by layer with attention the engine controls.

The streaming engine must decide, per layer, which keys a query sees and at which positions
(sink + sliding window while ingesting, sink + retrieved frames while answering), and must keep
keys un-rotated so stored frames can be re-positioned. It does so through two public seams:

- the decoder layers are called with an identity rotary embedding (cos = 1, sin = 0), so the
  attention module hands un-rotated queries and keys to the attention function;
- an attention function registered with `AttentionInterface` ("stc_rekv") receives them together
  with the engine's per-call context, applies the model's own rotary embedding at the positions
  the engine chooses, and attends over the keys the engine supplies.

Hybrid language models (Qwen3.5) also have gated linear-attention layers: they never reach the
attention function, and carry a recurrent state (a convolution window and a fixed-size state
matrix per layer) through the whole stream instead of keys and values. The driver keeps that state
in the model's own cache class, hands it to those layers only, and can restore it after a pass
that must leave the stream unchanged (`preserved_state`, around a question).

This module is the only place that calls decoder layers directly; it relies on the layer call
signature shared by transformers 5.x decoders (hidden_states, attention_mask, position_ids, the
KV cache, use_cache, position_embeddings, **kwargs), leaving the cache of full-attention layers at
its default (none).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import Tensor
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from stc.integrations.compat import CACHE_ARGUMENT

ATTENTION_NAME = "stc_rekv"
CONTEXT_KWARG = "stc_rekv_context"


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x rotated by (cos, sin); with partial rotary (cos narrower than x, as in Qwen3.5) only the
    first cos.shape[-1] channels rotate and the rest pass through."""
    width = cos.shape[-1]
    if width == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rotated, passed = x[..., :width], x[..., width:]
    return torch.cat([rotated * cos + rotate_half(rotated) * sin, passed], dim=-1)


def _rekv_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention function: the engine's context decides the keys; without one, plain SDPA."""
    entry = kwargs.pop(CONTEXT_KWARG, None)
    if entry is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    context, layer = entry  # layer: the index among the layers that hold keys and values
    out = context.attend(layer, query, key, value, scaling)  # [B, H, L, D]
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, _rekv_attention)


def _tensors(value) -> list[Tensor]:
    """Every tensor in nested dicts, lists and tuples."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


class DecoderDriver:
    """Runs a text decoder's layers with the engine's attention context.

    `rotary(x, positions)` returns the model's own (cos, sin) for `positions` [L] (or
    [rows, L] for multimodal RoPE); `rotate` applies them to [B, H, L, D] (`apply_rotary`).
    `num_layers` counts the layers that hold keys and values (the engine's layers); the others
    are linear-attention layers with a recurrent state (`recurrent`, None without them).
    """

    def __init__(self, language_model, lm_head):
        self.lm = language_model
        self.layers = language_model.layers
        self.norm = language_model.norm
        self.embed = language_model.get_input_embeddings()
        self.lm_head = lm_head
        self.config = language_model.config
        self.head_dim = getattr(self.config, "head_dim", None) or self.config.hidden_size // self.config.num_attention_heads
        self.num_kv_heads = self.config.num_key_value_heads
        types = getattr(self.config, "layer_types", None) or ["full_attention"] * len(self.layers)
        self.linear = [kind == "linear_attention" for kind in types]
        self.kv_index = {i: n for n, i in enumerate(i for i, linear in enumerate(self.linear) if not linear)}
        self.num_layers = len(self.kv_index)
        self.recurrent = None
        self.reset_recurrent()

    def reset_recurrent(self) -> None:
        """A fresh recurrent state for the linear-attention layers (a new stream)."""
        self.recurrent = DynamicCache(config=self.config) if any(self.linear) else None

    @contextmanager
    def preserved_state(self):
        """Passes inside the block leave the recurrent state as it was (a question's passes)."""
        saved = copy.deepcopy(self.recurrent)
        try:
            yield
        finally:
            self.recurrent = saved

    def recurrent_bytes(self) -> int:
        """Bytes of the linear-attention layers' recurrent state (constant over a stream)."""
        layers = getattr(self.recurrent, "layers", [])
        return sum(t.numel() * t.element_size() for layer in layers for t in _tensors(vars(layer)))

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
        return apply_rotary(x, cos, sin)

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
                if self.linear[layer_idx]:
                    out = layer(hidden, attention_mask=None, position_embeddings=identity,
                                **{CACHE_ARGUMENT: self.recurrent})
                else:
                    out = layer(
                        hidden,
                        attention_mask=None,
                        position_ids=None,
                        use_cache=False,
                        position_embeddings=identity,
                        **{CONTEXT_KWARG: (context, self.kv_index[layer_idx])},
                    )
                hidden = out[0] if isinstance(out, tuple) else out
                if layer_hook is not None:
                    hidden = layer_hook(layer_idx, hidden)
        return self.norm(hidden)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)
