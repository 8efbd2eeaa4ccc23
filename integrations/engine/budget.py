"""The stream's memory policy: quantize blocks as they retire, then, under a budget, lower the
oldest to 2 bits and evict until the stream fits.

- `kv_bits` 8/4/2: a block is quantized (`stc.kv_quant`) once ingestion no longer reads it (it
  left the window, or it is in the frame sink, which keeps its own full-precision copy), and
  dequantized only when a question fetches it; retrieval scores are unchanged (representative keys
  come from the full-precision keys);
- `memory_budget` (bytes): when the stream's KV (`StreamingSession.memory()["total_bytes"]`) would
  exceed it, the oldest blocks outside the sink and window drop to 2 bits, then blocks are evicted
  until it fits: the least novel (the most similar to its predecessor, so that the stream's
  variety is kept) with `eviction="novelty"`, or the oldest.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from stc.errors import MemoryBudgetError
from stc.integrations.engine.kv import StreamKV
from stc.integrations.engine.options import SessionOptions


class MemoryPolicy:
    """Applies `kv_bits`, `memory_budget` and `eviction` of `options` to a stream's blocks;
    `total_bytes()` measures the stream's KV."""

    def __init__(self, kv: StreamKV, options: SessionOptions, total_bytes: Callable[[], int]):
        self.kv, self.options, self.total_bytes = kv, options, total_bytes
        self.reset()

    def reset(self) -> None:
        self.novelty: dict[int, float] = {}  # block id -> `_dissimilarity` to its predecessor (novelty eviction)
        self.evicted_blocks = 0

    @property
    def tracks_novelty(self) -> bool:
        return self.options.memory_budget is not None and self.options.eviction == "novelty"

    def added(self, block: int) -> None:
        """A block was just stored (the newest)."""
        if self.tracks_novelty:
            row = len(self.kv.store) - 1
            self.novelty[block] = self._dissimilarity(row, row - 1)

    def retire(self, block: int) -> None:
        """A block no longer read by ingestion: held with `kv_bits` from now on."""
        if self.options.kv_bits < 16:
            self.kv.store.encode(block, self.options.kv_bits)

    def fit(self) -> None:
        """Lower the oldest evictable blocks to 2 bits, then evict, until the stream's KV fits
        `memory_budget`; the sink and the window's blocks are never touched."""
        budget = self.options.memory_budget
        if budget is None:
            return
        store = self.kv.store
        total = self.total_bytes()
        while total > budget:
            protected = self.kv.protected
            candidates = [b for b in store.ids if b not in protected]
            if not candidates:
                raise MemoryBudgetError(
                    f"memory_budget {budget} bytes cannot hold the sink and the ingestion window "
                    f"({total} bytes): raise it, or lower n_local ({self.options.n_local}) or "
                    f"sink_frames ({self.options.sink_frames})")
            wide = next((b for b in candidates if store.bits(b) > 2), None)
            if wide is not None:
                store.encode(wide, 2)
            else:
                oldest = self.options.eviction == "oldest"
                self._evict(candidates[0] if oldest else min(candidates, key=self.novelty.__getitem__))
            total = self.total_bytes()

    def _evict(self, block: int) -> None:
        store = self.kv.store
        if self.tracks_novelty:
            ids = store.ids
            row = ids.index(block)
            if row + 1 < len(ids):  # the successor's predecessor changes
                self.novelty[ids[row + 1]] = self._dissimilarity(row + 1, row - 1)
            del self.novelty[block]
        store.remove(block)
        self.evicted_blocks += 1

    def _representative(self, row: int) -> Tensor:
        store = self.kv.store
        return torch.cat([store.representative_keys(layer)[row].flatten() for layer in range(self.kv.num_layers)]).float()

    def _dissimilarity(self, row: int, previous: int) -> float:
        """1 - cosine of two blocks' representative keys over all layers (store rows); inf for
        the first block, which has no predecessor."""
        if previous < 0:
            return float("inf")
        return 1.0 - float(F.cosine_similarity(self._representative(row), self._representative(previous), dim=0))
