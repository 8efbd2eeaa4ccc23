"""Block stores: where a stream's per-frame KV blocks live and how they are encoded.

The streaming engine keeps one block per frame (or temporal slice): for every decoder layer the
block's un-rotated keys and values [H_kv, n, D], a representative key (the mean of the block's
keys, [H_kv, D]) used for retrieval, its timestamp and its position layout (the adapter's
description of where its tokens sit, kept with the block). A store hides where blocks are kept
and in which format: a block is held as computed (16 bits) until `encode` stores it with fewer
bits (`stc.kv_quant`); its representative key stays the one computed from the full-precision
keys, so retrieval chooses the same blocks whatever the encoding. Block ids are stable: they
are never reused, and removing or replacing a block leaves every other id valid. Every method below is abstract: a store implements them all,
and `tests/test_block_store.py` runs one battery of tests over every store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from stc.kv_quant import KV_BITS, SCHEMES, QuantizedTensor, quantize


class BlockStore(ABC):
    """Per-frame KV blocks of one stream, for all decoder layers."""

    @abstractmethod
    def add(self, keys: Sequence[Tensor], values: Sequence[Tensor], timestamp: float, layout: Tensor) -> int:
        """Store one block (one [H_kv, n, D] key and value tensor per layer, and its position
        layout); returns its id, larger than every id given before in this stream."""

    @abstractmethod
    def remove(self, block_id: int) -> None:
        """Forget a block; the other ids stay valid."""

    @abstractmethod
    def replace(self, block_id: int, keys: Sequence[Tensor], values: Sequence[Tensor], layout: Tensor) -> None:
        """Give a block new contents (e.g. fewer tokens, or another encoding), keeping its id,
        timestamp and place in time order; its representative key is recomputed."""

    @abstractmethod
    def encode(self, block_id: int, bits: int) -> None:
        """Hold a block's keys and values with `bits` bits (8, 4 or 2; 16 keeps them as
        computed), quantizing its current contents; precision is never raised (ValueError)."""

    @abstractmethod
    def bits(self, block_id: int) -> int:
        """The bits a block is held with (16: as computed)."""

    @abstractmethod
    def fetch(self, layer: int, ids: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor]:
        """Keys and values [H_kv, Σn, D] of blocks `ids` at `layer`, concatenated in the given order."""

    @abstractmethod
    def representative_keys(self, layer: int) -> Tensor:
        """[len(self), H_kv, D]: the mean key of every block at `layer`, in `ids` order, on the
        compute device."""

    @property
    @abstractmethod
    def ids(self) -> list[int]:
        """Ids of the blocks held, in time (insertion) order."""

    @property
    @abstractmethod
    def timestamps(self) -> list[float]:
        """Timestamp (seconds) of every block, in `ids` order."""

    @abstractmethod
    def tokens(self, block_id: int) -> int:
        """Number of tokens in a block."""

    @abstractmethod
    def layout(self, block_id: int) -> Tensor:
        """The block's position layout, as given to `add` or `replace`."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held by the blocks (keys and values, all layers; quantized ones as encoded)."""

    @abstractmethod
    def tier_bytes(self) -> dict[str, int]:
        """Bytes per tier: "full_precision" and "quantized" blocks, "representative_keys"."""

    @abstractmethod
    def clear(self) -> None:
        """Forget every block: a new stream, whose ids start again from 0."""

    def __len__(self) -> int:
        return len(self.ids)


class TensorBlockStore(BlockStore):
    """Blocks in host memory (pinned when the compute device is CUDA, so fetches are asynchronous
    copies) or on a given device; `encode`d blocks in the `scheme` of `stc.kv_quant` with groups
    of `group`, dequantized on the compute device when fetched. Representative keys stay on the
    compute device: they are small and read by every question."""

    def __init__(self, num_layers: int, compute_device: torch.device | str = "cpu", storage: str = "auto",
                 scheme: str = "kivi", group: int = 64):
        self.num_layers = num_layers
        self.compute_device = torch.device(compute_device)
        if storage == "auto":
            storage = "pinned" if self.compute_device.type == "cuda" else "device"
        if storage not in ("pinned", "cpu", "device"):
            raise ValueError(f"storage must be 'auto', 'pinned', 'cpu' or 'device', got {storage!r}")
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        if not isinstance(group, int) or group < 1:
            raise ValueError(f"group must be an integer >= 1, got {group!r}")
        self.storage, self.scheme, self.group = storage, scheme, group
        self.clear()

    def clear(self) -> None:
        self._next_id = 0
        self._blocks: dict[int, dict] = {}  # id -> keys, values (per layer), timestamp, layout; time order
        self._reps: list[Tensor | None] = [None] * self.num_layers  # [capacity, H_kv, D] per layer
        self._bytes = {"full_precision": 0, "quantized": 0}

    def _place(self, x: Tensor) -> Tensor:
        """x where blocks live, owning its memory (a view of a chunk's KV would keep the whole
        chunk alive after the other blocks are encoded or removed)."""
        x = x.to(self.compute_device if self.storage == "device" else "cpu")
        if x.untyped_storage().nbytes() > x.numel() * x.element_size():
            x = x.clone()
        return x.pin_memory() if self.storage == "pinned" else x

    def _check(self, keys: Sequence[Tensor], values: Sequence[Tensor]) -> None:
        if len(keys) != self.num_layers or len(values) != self.num_layers:
            raise ValueError(f"a block needs {self.num_layers} layers, got {len(keys)} keys and {len(values)} values")

    def _block(self, block_id: int) -> dict:
        if block_id not in self._blocks:
            raise KeyError(f"no block {block_id} in the store (held: {len(self._blocks)} blocks)")
        return self._blocks[block_id]

    def _contents(self, keys: Sequence[Tensor], values: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], int]:
        placed_k, placed_v = [self._place(k) for k in keys], [self._place(v) for v in values]
        size = sum(t.numel() * t.element_size() for t in (*placed_k, *placed_v))
        return placed_k, placed_v, size

    @staticmethod
    def _representative(k: Tensor) -> Tensor:
        return k.float().mean(dim=1).to(k.dtype)

    def add(self, keys: Sequence[Tensor], values: Sequence[Tensor], timestamp: float, layout: Tensor) -> int:
        self._check(keys, values)
        row = len(self._blocks)
        for layer, k in enumerate(keys):
            self._put_rep(layer, row, self._representative(k).to(self.compute_device))
        placed_k, placed_v, size = self._contents(keys, values)
        block_id, self._next_id = self._next_id, self._next_id + 1
        self._blocks[block_id] = {"keys": placed_k, "values": placed_v, "timestamp": float(timestamp),
                                  "layout": layout, "bytes": size, "bits": 16}
        self._bytes["full_precision"] += size
        return block_id

    def remove(self, block_id: int) -> None:
        self._block(block_id)  # a clear KeyError for an unknown id
        row, count = list(self._blocks).index(block_id), len(self._blocks)
        for buffer in self._reps:
            buffer[row : count - 1] = buffer[row + 1 : count].clone()
        block = self._blocks.pop(block_id)
        self._bytes[self._tier(block)] -= block["bytes"]

    @staticmethod
    def _tier(block: dict) -> str:
        return "full_precision" if block["bits"] == 16 else "quantized"

    def replace(self, block_id: int, keys: Sequence[Tensor], values: Sequence[Tensor], layout: Tensor) -> None:
        block = self._block(block_id)
        self._check(keys, values)
        row = list(self._blocks).index(block_id)
        for layer, k in enumerate(keys):
            self._reps[layer][row] = self._representative(k).to(self.compute_device)
        placed_k, placed_v, size = self._contents(keys, values)
        self._bytes[self._tier(block)] -= block["bytes"]
        block.update(keys=placed_k, values=placed_v, layout=layout, bytes=size, bits=16)
        self._bytes["full_precision"] += size

    def encode(self, block_id: int, bits: int) -> None:
        block = self._block(block_id)
        if bits not in KV_BITS:
            raise ValueError(f"bits must be one of {', '.join(map(str, KV_BITS))}, got {bits!r}")
        if bits > block["bits"]:
            raise ValueError(f"block {block_id} is held with {block['bits']} bits; precision cannot be raised to {bits}")
        if bits == block["bits"]:
            return
        keys = [self._quantize(k, bits, "keys") for k in self._full(block, "keys")]
        values = [self._quantize(v, bits, "values") for v in self._full(block, "values")]
        self._bytes[self._tier(block)] -= block["bytes"]
        size = sum(q.nbytes for q in (*keys, *values))
        block.update(keys=keys, values=values, bytes=size, bits=bits)
        self._bytes["quantized"] += size

    def _quantize(self, x: Tensor, bits: int, kind: str) -> QuantizedTensor:
        encoded = quantize(x, bits, kind, self.scheme, self.group)
        return encoded.to(self.compute_device if self.storage == "device" else "cpu")

    @staticmethod
    def _full(block: dict, kind: str) -> list[Tensor]:
        return [t.dequantize() if isinstance(t, QuantizedTensor) else t for t in block[kind]]

    def bits(self, block_id: int) -> int:
        return self._block(block_id)["bits"]

    def _put_rep(self, layer: int, row: int, rep: Tensor) -> None:
        """Write row `row` of a buffer that doubles when full (amortised O(1) per block)."""
        buffer = self._reps[layer]
        if buffer is None or buffer.shape[0] == row:
            grown = rep.new_empty((max(16, 2 * row), *rep.shape))
            if buffer is not None:
                grown[:row] = buffer[:row]
            buffer = self._reps[layer] = grown
        buffer[row] = rep

    def fetch(self, layer: int, ids: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor]:
        blocks = [self._block(i) for i in ids]
        non_blocking = self.storage == "pinned"

        def on_device(t):
            if isinstance(t, QuantizedTensor):  # codes travel; dequantized where they are used
                return t.to(device, non_blocking=non_blocking).dequantize()
            return t.to(device, non_blocking=non_blocking)

        keys = torch.cat([on_device(b["keys"][layer]) for b in blocks], dim=1)
        values = torch.cat([on_device(b["values"][layer]) for b in blocks], dim=1)
        return keys, values

    def representative_keys(self, layer: int) -> Tensor:
        reps = self._reps[layer]
        if reps is None or not self._blocks:
            raise IndexError("the block store is empty")
        return reps[: len(self._blocks)]

    @property
    def ids(self) -> list[int]:
        return list(self._blocks)

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def timestamps(self) -> list[float]:
        return [b["timestamp"] for b in self._blocks.values()]

    def tokens(self, block_id: int) -> int:
        return self._block(block_id)["keys"][0].shape[1]

    def layout(self, block_id: int) -> Tensor:
        return self._block(block_id)["layout"]

    def nbytes(self) -> int:
        return self._bytes["full_precision"] + self._bytes["quantized"]

    def tier_bytes(self) -> dict[str, int]:
        reps = 0
        if self._blocks:
            reps = sum(r[: len(self._blocks)].numel() * r.element_size() for r in self._reps)
        return {**self._bytes, "representative_keys": reps}
