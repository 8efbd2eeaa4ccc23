"""The stream's keys and values, in tiers, behind one object (`StreamKV`).

Per layer (`LayerKV`, un-rotated keys/values [H_kv, n, D] on the compute device):
- the header sink: the chat template's header, prefilled first; visible to everything;
- the frame sink: the first `sink_frames` frames' tokens (LongLive's frame sink), visible to
  every later frame while ingesting, however short the window;
- the window: the last `n_local` tokens of the other frames, which new frames attend to.
Every frame (or temporal slice) is also one block in the `BlockStore`, for retrieval: the blocks
of the frame sink and the window are thus held twice, once in these device tiers (read by
ingestion) and once in the store (read by questions, and kept after they slide out).
Each tier's tensors own their memory (never a view of a chunk's KV or of another tier), so that
the bytes `tier_bytes` reports are the bytes held.

The attention contexts read and extend the tiers through this object only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stc.integrations.engine.block_store import BlockStore


def _owned(x: Tensor) -> Tensor:
    """A copy of x that owns exactly its memory."""
    return x.clone(memory_format=torch.contiguous_format)


def _appended(held: Tensor | None, new: Tensor) -> Tensor:
    return _owned(new) if held is None else torch.cat([held, new], dim=1)


def _last(held: Tensor | None, new: Tensor, count: int) -> Tensor:
    """The last `count` tokens of held + new, in a tensor of their own."""
    new = new[:, -count:]
    keep = count - new.shape[1]
    if held is None or keep == 0:
        return _owned(new)
    return torch.cat([held[:, -keep:], new], dim=1)


class LayerKV:
    """Header sink, frame sink and sliding window of one layer."""

    def __init__(self):
        self.sink_k = self.sink_v = self.frame_k = self.frame_v = self.win_k = self.win_v = None

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.sink_k, self.sink_v, self.frame_k, self.frame_v, self.win_k, self.win_v) if t is not None]

    def ingestion_kv(self) -> tuple[list[Tensor], list[Tensor]]:
        """Keys and values new tokens attend to while ingesting: header sink, frame sink, window."""
        keys = [t for t in (self.sink_k, self.frame_k, self.win_k) if t is not None]
        values = [t for t in (self.sink_v, self.frame_v, self.win_v) if t is not None]
        return keys, values

    @property
    def sink_tokens(self) -> int:
        """Tokens always visible while ingesting: the header and the frame sink."""
        return sum(t.shape[1] for t in (self.sink_k, self.frame_k) if t is not None)

    @property
    def window_tokens(self) -> int:
        return 0 if self.win_k is None else self.win_k.shape[1]

    def hold_header(self, k: Tensor, v: Tensor) -> None:
        self.sink_k, self.sink_v = _owned(k), _owned(v)

    def extend(self, k: Tensor, v: Tensor, new_sink: int, n_local: int) -> None:
        """A chunk's K/V [H_kv, n, D]: its first `new_sink` tokens join the frame sink, the rest
        the window, which keeps its last `n_local` tokens."""
        if new_sink:
            self.frame_k = _appended(self.frame_k, k[:, :new_sink])
            self.frame_v = _appended(self.frame_v, v[:, :new_sink])
        if k.shape[1] > new_sink:
            self.win_k = _last(self.win_k, k[:, new_sink:], n_local)
            self.win_v = _last(self.win_v, v[:, new_sink:], n_local)


class StreamKV:
    """One stream's KV: per layer the device tiers (`layers`), and the blocks (`store`) with the
    ids of those in the frame sink (`sink_blocks`) and in the window (`window`, oldest first,
    of which the first `window_skip` tokens have slid out)."""

    def __init__(self, store: BlockStore, num_layers: int, n_local: int, sink_block_count: int):
        self.store, self.num_layers = store, num_layers
        self.n_local = n_local
        self.sink_block_count = sink_block_count  # blocks that join the frame sink
        self.reset(0)

    def reset(self, header_tokens: int) -> None:
        """A new stream, whose header (prefilled next) has `header_tokens` tokens."""
        self.store.clear()
        self.layers = [LayerKV() for _ in range(self.num_layers)]
        self.sink_blocks: list[int] = []
        self.window: list[int] = []
        self.window_skip = 0
        self.header_tokens = header_tokens

    # -- reading ----------------------------------------------------------------------------

    def layer(self, index: int) -> LayerKV:
        return self.layers[index]

    def ingestion_layouts(self) -> list[Tensor]:
        """Position layouts of the frames ingestion sees after the header: the frame sink's,
        then the window's (the oldest trimmed to the tokens still in the window)."""
        layouts = [self.store.layout(b) for b in self.window]
        if layouts and self.window_skip:
            layouts[0] = layouts[0][:, self.window_skip :]
        return [self.store.layout(b) for b in self.sink_blocks] + layouts

    def fetch(self, layer: int, ids: list[int], device) -> tuple[Tensor, Tensor]:
        return self.store.fetch(layer, ids, device)

    def layout(self, block: int) -> Tensor:
        return self.store.layout(block)

    def tokens(self, block: int) -> int:
        return self.store.tokens(block)

    @property
    def sink_room(self) -> int:
        """Blocks the frame sink still takes."""
        return self.sink_block_count - len(self.sink_blocks)

    @property
    def protected(self) -> set[int]:
        """Blocks ingestion still reads (frame sink, window): never evicted."""
        return set(self.sink_blocks) | set(self.window)

    def tier_bytes(self) -> dict[str, int]:
        """Bytes of the device tiers: "sink" (header and frame sink) and "window"."""
        def size(tensors):
            return sum(t.numel() * t.element_size() for t in tensors if t is not None)

        return {
            "sink": size(t for kv in self.layers for t in (kv.sink_k, kv.sink_v, kv.frame_k, kv.frame_v)),
            "window": size(t for kv in self.layers for t in (kv.win_k, kv.win_v)),
        }

    # -- writing ----------------------------------------------------------------------------

    def add_block(self, keys: list[Tensor], values: list[Tensor], timestamp: float, layout: Tensor) -> tuple[int, bool]:
        """Store a newly ingested block: (its id, whether it joined the frame sink)."""
        block = self.store.add(keys, values, timestamp, layout)
        if len(self.sink_blocks) < self.sink_block_count:
            self.sink_blocks.append(block)
            return block, True
        self.window.append(block)
        return block, False

    def slide_window(self) -> list[int]:
        """Drop the oldest window blocks beyond `n_local` tokens (the layers' window K/V were
        trimmed the same way); returns the blocks that left the window."""
        excess = sum(self.store.tokens(b) for b in self.window) - self.window_skip - self.n_local
        left = []
        while excess > 0:
            remaining = self.store.tokens(self.window[0]) - self.window_skip
            if remaining <= excess:
                left.append(self.window.pop(0))
                self.window_skip = 0
                excess -= remaining
            else:
                self.window_skip += excess
                excess = 0
        return left
