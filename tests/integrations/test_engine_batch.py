"""The seams of batched multi-stream ingestion: the adapter encodes several streams' clips in one
vision-encoder call (`stream_blocks_batch`: one ClipBlocks per stream, each exactly what
`stream_blocks` gives that stream alone, with its own Cacher references, Pruner history and
counters); a session prefills blocks encoded elsewhere (`append_encoded`) with the report and
K/V `append_frames` gives."""

import pytest
import torch

import stc
from stc import STCConfig
from stc.api import adapter_of, state_of
from stc.integrations.engine.batch import batch_key, encode_streams
from stc.integrations.engine.session import StreamingSession
from tests.families import FAMILIES, engine_frames
from tests.tiny import random_frames, tiny_llava, tiny_processor

CONFIG = STCConfig(cache_interval=3, update_ratio=0.5, keep_ratio=0.5)
STREAMS, CALLS, FRAMES = 3, 3, 2


def _blocks(blocks):
    return [t.tolist() for t in blocks.tokens], [k.tolist() for k in blocks.kept]


def _clips(model, processor):
    adapter = adapter_of(model)
    videos = [random_frames(CALLS * FRAMES, seed=s) for s in range(STREAMS)]
    return adapter, [[adapter.preprocess(model, processor, v[c * FRAMES : (c + 1) * FRAMES]) for c in range(CALLS)]
                     for v in videos]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_llava_encodes_several_streams_in_one_call_as_each_alone(dtype):
    model = stc.patch(tiny_llava(dtype=dtype), CONFIG)
    adapter, clips = _clips(model, tiny_processor())
    state = state_of(model)
    alone = []
    for s in range(STREAMS):
        with torch.no_grad(), stc.stream(model):
            alone.append([_blocks(adapter.stream_blocks(model, state, clip, [0.0] * FRAMES, None)) for clip in clips[s]])
            alone[-1].append(state.streams[0].stats.as_dict())
    with torch.no_grad(), stc.stream(model):
        together = [[] for _ in range(STREAMS)]
        for c in range(CALLS):
            rows = adapter.stream_blocks_batch(model, state, [clips[s][c] for s in range(STREAMS)],
                                               [[0.0] * FRAMES] * STREAMS, [None] * STREAMS)
            for s, blocks in enumerate(rows):
                together[s].append(_blocks(blocks))
        for s in range(STREAMS):
            together[s].append(state.streams[s].stats.as_dict())
    assert together == alone
    stats = [a[-1] for a in alone]
    assert all(st["vit_tokens_recomputed"] < st["vit_tokens"] for st in stats), "the Cacher reused tokens"
    assert alone[0][0] != alone[1][0], "the streams differ"
    stc.unpatch(model)


def test_a_family_that_encodes_one_stream_per_call_says_so():
    family = FAMILIES["qwen2_5_vl"]
    model = stc.patch(family.build(), CONFIG)
    adapter = adapter_of(model)
    assert not adapter.batches_streams
    with pytest.raises(NotImplementedError, match="one stream per call"):
        adapter.stream_blocks_batch(model, state_of(model), [], [], [])
    session = StreamingSession(model, family.processor(), config=CONFIG)
    assert batch_key(session, torch.zeros(2, 24, 24, 3, dtype=torch.uint8)) is None
    session.close()
    stc.unpatch(model)
