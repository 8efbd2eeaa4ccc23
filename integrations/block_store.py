"""Block stores: where a stream's per-frame KV blocks live and how they are encoded.

The streaming engine keeps one block per frame: for every decoder layer the frame's un-rotated
keys and values [H_kv, n, D] and a representative key (the mean of the block's keys, [H_kv, D])
used for retrieval. A store hides where blocks are kept and in which format; the engine only
adds blocks, reads representative keys, and fetches the blocks a question retrieved.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor


class BlockStore(ABC):
    """Per-frame KV blocks of one stream, for all decoder layers."""

    @abstractmethod
    def add(self, keys: Sequence[Tensor], values: Sequence[Tensor], timestamp: float) -> int:
        """Store one frame's block (one [H_kv, n, D] key and value tensor per layer); returns its id."""

    @abstractmethod
    def fetch(self, layer: int, ids: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor]:
        """Keys and values [H_kv, Σn, D] of blocks `ids` at `layer`, concatenated in the given order."""

    @abstractmethod
    def representative_keys(self, layer: int) -> Tensor:
        """[num_blocks, H_kv, D] mean key of every block at `layer`, on the compute device."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held by the blocks (keys and values, all layers)."""

    @property
    @abstractmethod
    def timestamps(self) -> list[float]:
        """Timestamp (seconds) of every block, by id."""

    @abstractmethod
    def tokens(self, block_id: int) -> int:
        """Number of tokens in a block."""

    @abstractmethod
    def clear(self) -> None: ...

    def __len__(self) -> int:
        return len(self.timestamps)


class TensorBlockStore(BlockStore):
    """Full-precision blocks in host memory (pinned when the compute device is CUDA, so fetches
    are asynchronous copies) or on a given device. Representative keys stay on the compute
    device: they are small and read by every question."""

    def __init__(self, num_layers: int, compute_device: torch.device | str = "cpu", storage: str = "auto"):
        self.num_layers = num_layers
        self.compute_device = torch.device(compute_device)
        if storage == "auto":
            storage = "pinned" if self.compute_device.type == "cuda" else "device"
        if storage not in ("pinned", "cpu", "device"):
            raise ValueError(f"storage must be 'auto', 'pinned', 'cpu' or 'device', got {storage!r}")
        self.storage = storage
        self.clear()

    def clear(self) -> None:
        self._keys: list[list[Tensor]] = [[] for _ in range(self.num_layers)]
        self._values: list[list[Tensor]] = [[] for _ in range(self.num_layers)]
        self._reps: list[Tensor | None] = [None] * self.num_layers
        self._timestamps: list[float] = []
        self._tokens: list[int] = []
        self._bytes = 0

    def _place(self, x: Tensor) -> Tensor:
        if self.storage == "device":
            return x.to(self.compute_device)
        x = x.to("cpu")
        return x.pin_memory() if self.storage == "pinned" else x

    def add(self, keys: Sequence[Tensor], values: Sequence[Tensor], timestamp: float) -> int:
        if len(keys) != self.num_layers or len(values) != self.num_layers:
            raise ValueError(f"a block needs {self.num_layers} layers, got {len(keys)} keys and {len(values)} values")
        for layer, (k, v) in enumerate(zip(keys, values)):
            self._append_rep(layer, k.float().mean(dim=1).to(k.dtype).to(self.compute_device))
            self._keys[layer].append(self._place(k))
            self._values[layer].append(self._place(v))
            self._bytes += k.numel() * k.element_size() + v.numel() * v.element_size()
        self._timestamps.append(float(timestamp))
        self._tokens.append(keys[0].shape[1])
        return len(self._timestamps) - 1

    def _append_rep(self, layer: int, rep: Tensor) -> None:
        """Append to a buffer that doubles when full (amortised O(1) per block)."""
        count = len(self._timestamps)
        buffer = self._reps[layer]
        if buffer is None or buffer.shape[0] == count:
            grown = rep.new_empty((max(16, 2 * count), *rep.shape))
            if buffer is not None:
                grown[:count] = buffer
            buffer = self._reps[layer] = grown
        buffer[count] = rep

    def fetch(self, layer: int, ids: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor]:
        keys = torch.cat([self._keys[layer][i] for i in ids], dim=1)
        values = torch.cat([self._values[layer][i] for i in ids], dim=1)
        non_blocking = self.storage == "pinned"
        return keys.to(device, non_blocking=non_blocking), values.to(device, non_blocking=non_blocking)

    def representative_keys(self, layer: int) -> Tensor:
        reps = self._reps[layer]
        if reps is None:
            raise IndexError("the block store is empty")
        return reps[: len(self._timestamps)]

    def nbytes(self) -> int:
        return self._bytes

    @property
    def timestamps(self) -> list[float]:
        return self._timestamps

    def tokens(self, block_id: int) -> int:
        return self._tokens[block_id]
