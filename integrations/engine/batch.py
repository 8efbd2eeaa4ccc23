"""Several streams' chunks through the vision encoder in one call (issue 36).

Sessions on one model whose chunks can share a call (equal `batch_key`) are encoded together by
`encode_streams`: the adapter's `stream_blocks_batch` makes their frames the rows of one video
batch, and each row keeps its own stream's Cacher references, Pruner history and counters,
because the model's STC state holds one stream per row while it runs (the caller puts them
there: `stc.integrations.serve.batch`). Each session then prefills its own blocks
(`StreamingSession.append_encoded`), or the sessions whose chunks have one token count prefill
them in one LLM call (`stc.integrations.engine.batch_prefill`).

Batched only where the blocks are exactly those of each stream alone: equal STC configs (not a
peer method, not the change gate, whose budget is the largest change among all rows of a call),
on a family with `batches_streams`, chunks of equal length and frame size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from stc.config import STCConfig
from stc.timing import synchronize

from stc.integrations.adapters.contract import ClipBlocks


@dataclass
class EncodedChunk:
    """One stream's share of a batched encoder call: its blocks, the visual tokens its selection
    was offered, and its share of the call's seconds (the call's over its rows, whose chunks are
    equal), so that the rows' seconds add up to the call's."""

    blocks: ClipBlocks
    tokens_in: int
    encode_s: float


def stc_config(session) -> STCConfig | object:
    """The config the session's stream runs with (STC off when it was given none)."""
    return STCConfig.off() if session.config is None else session.config


def batch_key(session, chunk: Tensor) -> tuple | None:
    """What must be equal for sessions' chunks (uint8 frames [F, H, W, 3]) to share one encoder
    call: the model, processor, STC config and chunk shape; None when this one cannot share."""
    config = stc_config(session)
    if not session.adapter.batches_streams or not isinstance(config, STCConfig) or config.change_threshold is not None:
        return None
    return (id(session.model), id(session.processor), config, tuple(chunk.shape))


@torch.inference_mode()
def encode_streams(sessions: list, chunks: list[Tensor], times: list[list[float]]) -> list[EncodedChunk]:
    """The chunks (entry s: uint8 frames [F, H, W, 3] of sessions[s], in time order, with their
    times) through preprocessing, one vision-encoder call and the selection. The model's STC
    state must hold stream s of sessions[s] as its row s."""
    first = sessions[0]
    model, adapter, state = first.model, first.adapter, first.state
    if len(state.streams) != len(sessions):
        raise RuntimeError(f"the model's STC state holds {len(state.streams)} streams for {len(sessions)} sessions")
    t0 = time.perf_counter()
    with state.timer.section("preprocess"):
        pixels = [adapter.preprocess(model, s.processor, chunk.numpy()) for s, chunk in zip(sessions, chunks)]
    offered = [stream.stats.llm_tokens_in for stream in state.streams]
    blocks = adapter.stream_blocks_batch(model, state, pixels, times, [s.ingestion.block_text for s in sessions])
    synchronize(model.device)
    share = (time.perf_counter() - t0) / len(sessions)
    return [EncodedChunk(b, stream.stats.llm_tokens_in - before, share)
            for b, stream, before in zip(blocks, state.streams, offered)]
