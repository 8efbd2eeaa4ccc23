"""The attention contexts the engine hands the decoder driver (`DecoderDriver.run`): for each
full-attention layer they choose the keys a query sees and the positions everyone sits at, reading
(and, while ingesting, extending) the stream's KV through its `StreamKV`.

Keys are stored un-rotated and rotated here at the positions of the moment: the frames a query
sees are re-positioned contiguously after the header, so that a stream of any length stays within
the positions the model was trained on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.integrations.adapters.decoder import DecoderDriver
from stc.integrations.engine.kv import StreamKV


def sliding_mask(queries: int, sink: int, window: int, n_local: int, device, new_sink: int = 0) -> Tensor:
    """[queries, sink + window + queries] bool: sink always visible; query i (stream index
    window + i within window+chunk) sees chunk/window tokens j with w+i-n_local < j <= w+i, and
    the chunk's first `new_sink` tokens (frames joining the sink) whenever j <= w+i."""
    q = torch.arange(queries, device=device).view(-1, 1) + window
    j = torch.arange(window + queries, device=device).view(1, -1)
    joining = (j >= window) & (j < window + new_sink)
    local = (j <= q) & ((j > q - n_local) | joining)
    return torch.cat([torch.ones(queries, sink, dtype=torch.bool, device=device), local], dim=1)


class StreamAttention:
    """Ingestion (and the retrieval pass): attention over sink + sliding window + new tokens.

    `into`: "sink" (the header: held as the header sink), "window" (frames: their K/V extend the
    frame sink and window, and are kept in `new_kv` for the blocks) or None (the retrieval pass:
    the stream is unchanged, the queries are kept in `queries`). `new_layouts` are the position
    layouts of the frames being ingested (None for text); their first `new_sink` tokens join the
    frame sink."""

    def __init__(self, kv: StreamKV, adapter, driver: DecoderDriver, into: str | None,
                 new_layouts: list[Tensor] | None = None, new_sink: int = 0):
        self.kv, self.adapter, self.driver = kv, adapter, driver
        self.into = into
        self.new_layouts = new_layouts
        self.new_sink = new_sink
        self.new_kv: dict[int, tuple[Tensor, Tensor]] = {}
        self.queries: dict[int, Tensor] = {}
        self._positions: Tensor | None = None

    def positions(self, count: int, device) -> Tensor:
        """[rows, sink + window + count] positions, the same at every layer: the sink, the
        window's frames re-positioned from the sink's end, then the new tokens."""
        if self._positions is None:
            header = self.kv.header_tokens if self.into != "sink" else 0
            sink = self.adapter.text_positions(0, header) if self.into != "sink" else None
            layouts = self.kv.ingestion_layouts()
            if self.new_layouts is not None:
                layouts = layouts + self.new_layouts
            visual, extent = self.adapter.visual_positions(header, layouts)
            parts = [p for p in (sink, visual) if p is not None]
            if self.new_layouts is None:
                parts.append(self.adapter.text_positions(header + extent, count))
            self._positions = torch.cat(parts, dim=1).to(device)
        return self._positions

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        held = self.kv.layer(layer)
        held_k, held_v = held.ingestion_kv()
        sink, window = held.sink_tokens, held.window_tokens
        count = q.shape[2]
        keys, values = torch.cat(held_k + [k[0]], dim=1)[None], torch.cat(held_v + [v[0]], dim=1)[None]
        positions = self.positions(count, q.device)
        q_rot = self.driver.rotate(q, positions[:, sink + window :])
        k_rot = self.driver.rotate(keys, positions)
        mask = sliding_mask(count, sink, window, self.kv.n_local, q.device, self.new_sink)
        out = F.scaled_dot_product_attention(q_rot, k_rot, values, attn_mask=mask, scale=scale, enable_gqa=True)
        if self.into == "sink":
            held.hold_header(k[0], v[0])
        elif self.into == "window":
            held.extend(k[0], v[0], self.new_sink, self.kv.n_local)
            self.new_kv[layer] = (k[0], v[0])
        else:
            self.queries[layer] = q[0]
        return out


class AnswerAttention:
    """Answering: [header sink][retrieved blocks][prompt + generated], re-positioned contiguously;
    the prompt's and the answer's K/V live here only, so the stream is unchanged by answering."""

    def __init__(self, kv: StreamKV, adapter, driver: DecoderDriver, retrieved: dict[int, list[int]]):
        self.kv, self.adapter, self.driver = kv, adapter, driver
        self.retrieved = retrieved
        self.cache: dict[int, tuple[Tensor, Tensor]] = {}
        self.next_position: dict[int, int] = {}

    def context_tokens(self, layer: int) -> int:
        return self.kv.header_tokens + sum(self.kv.tokens(i) for i in self.retrieved[layer])

    def _context(self, layer: int, like: Tensor) -> None:
        header = self.kv.layer(layer)
        keys, values = [header.sink_k], [header.sink_v]
        ids = self.retrieved[layer]
        if ids:
            block_k, block_v = self.kv.fetch(layer, ids, like.device)
            keys.append(block_k.to(like.dtype))
            values.append(block_v.to(like.dtype))
        keys, values = torch.cat(keys, dim=1)[None], torch.cat(values, dim=1)[None]
        start = self.kv.header_tokens
        visual, extent = self.adapter.visual_positions(start, [self.kv.layout(i) for i in ids])
        positions = torch.cat([self.adapter.text_positions(0, start), visual], dim=1).to(like.device)
        self.cache[layer] = (self.driver.rotate(keys, positions), values)
        self.next_position[layer] = start + extent

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        if layer not in self.cache:
            self._context(layer, q)
        count = q.shape[2]
        positions = self.adapter.text_positions(self.next_position[layer], count).to(q.device)
        q_rot, k_rot = self.driver.rotate(q, positions), self.driver.rotate(k, positions)
        cached_k, cached_v = self.cache[layer]
        keys, values = torch.cat([cached_k, k_rot], dim=2), torch.cat([cached_v, v], dim=2)
        self.cache[layer] = (keys, values)
        self.next_position[layer] += count
        mask = None
        if count > 1:
            past = keys.shape[2] - count
            mask = torch.ones(count, keys.shape[2], dtype=torch.bool, device=q.device)
            mask[:, past:] = torch.ones(count, count, dtype=torch.bool, device=q.device).tril()
        return F.scaled_dot_product_attention(q_rot, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
