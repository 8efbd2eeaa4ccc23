"""Several streams' new blocks through the LLM in one batched prefill (issue 36).

Each session's chunk, encoded alone or with others (`stc.integrations.engine.batch`), is one
row of a [B, L, D] batch that runs through the decoder layers once (`DecoderDriver.run`): the
projections, MLPs and norms see all rows together. Attention is the only step that mixes
tokens, and it stays each stream's own: `RowsAttention` hands row b of every layer's queries,
keys and values to stream b's `StreamAttention`, which attends over that stream's sink and
window at its own positions (multimodal RoPE included) and extends that stream's KV, exactly as
when the stream prefills alone. So the streams need not share their KV lengths, sink state,
positions, quantized blocks or budgets; what they must share is the batch's shape.

Batched together (`prefill_key`): chunks of sessions on one model with the same number of new
tokens L and the same extra features (none, or DeepStack over the same layers). Prefilled one
after another: a chunk of another length (another keep ratio, a chunk of fewer frames, Qwen3-VL
timestamps of another token count), hybrid models (Qwen3.5: the linear-attention layers
carry each stream's recurrent state in the driver's own cache, one stream per call) and
mixture-of-experts models (each expert's matrix product takes the tokens routed to it, a count
that changes with the batch, so a row's bits would depend on the other streams).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import Tensor

from stc.timing import synchronize

from stc.integrations.engine.batch import EncodedChunk
from stc.integrations.engine.ingest import IngestReport, chunk_report, extras_hook


class RowsAttention:
    """The attention context of a batched prefill: row b goes to `contexts[b]` (stream b's
    `StreamAttention`), and the rows' outputs are stacked again."""

    def __init__(self, contexts: list):
        self.contexts = contexts

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        rows = [context.attend(layer, q[b : b + 1], k[b : b + 1], v[b : b + 1], scale)
                for b, context in enumerate(self.contexts)]
        return torch.cat(rows)


def prefill_key(session, chunk: EncodedChunk) -> tuple | None:
    """What must be equal for sessions' chunks to share one prefill: the model, the new tokens'
    count and the extra features' layers; None when this session prefills alone (a hybrid
    model's recurrent state, or mixture-of-experts layers)."""
    driver = session.driver
    if any(driver.linear) or getattr(driver.config, "num_experts_per_tok", None):
        return None
    blocks = chunk.blocks
    extra_layers = None if blocks.extras is None else blocks.extras[0].shape[0]
    return id(session.model), sum(len(t) for t in blocks.tokens), extra_layers


@dataclass
class PrefilledChunk:
    """One stream's part of a batched prefill: its report (as `append_encoded` gives it), or
    the error that stopped it."""

    report: IngestReport | None = None
    error: Exception | None = None


@torch.inference_mode()
def prefill_streams(sessions: list, chunks: list[EncodedChunk], times: list[list[float]]) -> list[PrefilledChunk]:
    """Prefill chunk s (with its frame times) into sessions[s], all rows in one LLM call; the
    chunks must have one `prefill_key`. A stream whose chunk does not fit its frames, or whose
    memory budget fails afterwards, fails alone; a failed LLM call fails every row."""
    keys = {prefill_key(s, c) for s, c in zip(sessions, chunks)}
    if len(keys) != 1 or None in keys:
        raise ValueError(f"a batched prefill needs chunks of one prefill shape, got {sorted(map(str, keys))}")
    results = [PrefilledChunk() for _ in sessions]
    with ExitStack() as held:
        for session in sessions:
            session.wait()
        for session in sorted(sessions, key=id):  # one order for every caller: no lock cycle
            held.enter_context(session.ingestion.lock)
        plans = {}
        for row, (session, chunk, stamps) in enumerate(zip(sessions, chunks, times)):
            try:
                checked = session.ingestion.timestamps(len(stamps), stamps)
                plans[row] = session.ingestion.plan_prefill(chunk.blocks, checked)
            except Exception as exc:  # noqa: BLE001 - this stream's own chunk; the others go on
                results[row].error = exc
        if plans:
            _run_rows(sessions, chunks, plans, results)
    return results


def _run_rows(sessions: list, chunks: list[EncodedChunk], plans: dict, results: list[PrefilledChunk]) -> None:
    """The planned rows (row -> PrefillPlan) through the LLM in one call, then each into its
    stream's store; each row's report gets its share of the call's seconds."""
    first = sessions[next(iter(plans))]
    t0 = time.perf_counter()
    with first.timer.section("llm_prefill"):
        extras = [plan.extras for plan in plans.values()]
        try:
            first.driver.run(torch.cat([plan.embeds for plan in plans.values()]),
                             RowsAttention([plan.context for plan in plans.values()]),
                             extras_hook(None if extras[0] is None else torch.cat(extras, dim=1)))
        except Exception as exc:  # noqa: BLE001 - the call's rows stop; the caller's other streams go on
            for row in plans:
                results[row].error = exc
            return
        for row, plan in plans.items():
            try:
                sessions[row].ingestion.store_prefilled(plan)
            except Exception as exc:  # noqa: BLE001 - e.g. this stream's memory budget
                results[row].error = exc
        if first.ingestion.synchronizes:
            synchronize(first.model.device)
    share = (time.perf_counter() - t0) / len(plans)
    for row, plan in plans.items():
        if results[row].error is None:
            chunk = chunks[row]
            results[row].report = chunk_report(chunk.blocks, plan.times, chunk.tokens_in, chunk.encode_s, share)
