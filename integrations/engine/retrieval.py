"""Retrieval: which blocks a question reads, per layer.

The question first runs alone through the LLM over the ingestion context (a retrieval pass that
leaves the stream unchanged); at every layer the mean of its un-rotated queries scores each
block's representative key (dot product) and the `topk` best blocks, in time order, are that
layer's context. When every eligible block fits in `topk`, no pass is run.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stc.integrations.adapters.decoder import DecoderDriver
from stc.integrations.engine.attention import StreamAttention
from stc.integrations.engine.kv import StreamKV
from stc.integrations.engine.prompt import PromptTemplate


def select_blocks(queries: Tensor, reps: Tensor, topk: int, eligible: Tensor) -> list[int]:
    """Rows (in the store's `ids` order) of the top-k blocks by mean question query ·
    representative key (summed over heads), in time order. queries [H, L, D] un-rotated;
    reps [N, H_kv, D]; eligible [N] bool."""
    query = queries.float().mean(dim=1)  # [H, D]
    groups = query.shape[0] // reps.shape[1]
    scores = torch.einsum("nhd,hd->n", reps.float().repeat_interleave(groups, dim=1), query)
    scores = scores.masked_fill(~eligible, float("-inf"))
    count = min(topk, int(eligible.sum()))
    if count == 0:
        return []
    return sorted(torch.topk(scores, count).indices.tolist())


class Retriever:
    """Chooses a question's blocks from a stream's KV."""

    def __init__(self, kv: StreamKV, adapter, driver: DecoderDriver, template: PromptTemplate, topk: int, device):
        self.kv, self.adapter, self.driver, self.template = kv, adapter, driver, template
        self.topk, self.device = topk, device

    def retrieve(self, question: str, since: float | None) -> dict[int, list[int]]:
        """Layer -> block ids in time order; `since` keeps only blocks at or after that time."""
        store = self.kv.store
        layers = range(self.driver.num_layers)
        if len(store) == 0:
            return {layer: [] for layer in layers}
        times = torch.tensor(store.timestamps)
        eligible = times >= since if since is not None else torch.ones(len(times), dtype=torch.bool)
        held = store.ids
        if self.topk >= int(eligible.sum()):  # everything eligible fits: no scoring pass needed
            ids = [held[i] for i in eligible.nonzero().flatten().tolist()]
            return {layer: ids for layer in layers}
        ids = torch.tensor([self.template.ids(question)], device=self.device)
        context = StreamAttention(self.kv, self.adapter, self.driver, into=None)
        with self.driver.preserved_state():  # the answer pass starts from the stream's state
            self.driver.run(self.driver.embed(ids), context)
        eligible = eligible.to(self.device)
        return {
            layer: [held[i] for i in select_blocks(context.queries[layer], store.representative_keys(layer), self.topk, eligible)]
            for layer in layers
        }
