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


def _session_run(model, encoded_elsewhere: bool):
    """One session: a first chunk by append_frames (its stream exists), then three chunks either
    by append_frames or encoded by encode_streams and prefilled by append_encoded."""
    session = StreamingSession(model, tiny_processor(), config=CONFIG, n_local=8, topk=2, max_new_tokens=4,
                               vit_batch=FRAMES)
    video = random_frames(4 * FRAMES, seed=7)
    reports = [session.append_frames(video[:FRAMES])]
    for c in range(1, 4):
        chunk = video[c * FRAMES : (c + 1) * FRAMES]
        if encoded_elsewhere:
            times = [(c * FRAMES + i) / session.sample_fps for i in range(FRAMES)]
            (encoded,) = encode_streams([session], [torch.from_numpy(chunk)], [times])
            reports.append(session.append_encoded(encoded.blocks, times, encoded.tokens_in, encoded.encode_s))
        else:
            reports.append(session.append_frames(chunk))
    store = session.store
    out = {"reports": [(r.frames, r.tokens_in, r.tokens_kept, [k.tolist() for k in r.kept]) for r in reports],
           "kv": [store.fetch(layer, store.ids, "cpu") for layer in range(session.driver.num_layers)],
           "answer": session.ask("what is in the video ?").token_ids, "stats": session.stats(),
           "memory": session.memory(), "last": session.last_timestamp}
    session.close()
    return out


def test_a_session_prefills_blocks_encoded_elsewhere_as_its_own():
    model = tiny_llava()
    alone, elsewhere = _session_run(model, False), _session_run(model, True)
    for key in ("reports", "answer", "stats", "memory", "last"):
        assert elsewhere[key] == alone[key], key
    for (k1, v1), (k2, v2) in zip(elsewhere["kv"], alone["kv"]):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
    assert alone["stats"]["llm_tokens_kept"] < alone["stats"]["llm_tokens_in"]


def test_blocks_encoded_elsewhere_are_checked_as_appended_frames():
    model = tiny_llava()
    session = StreamingSession(model, tiny_processor(), config=CONFIG, vit_batch=FRAMES)
    session.append_frames(random_frames(FRAMES), timestamps=[5.0, 6.0])
    (encoded,) = encode_streams([session], [torch.from_numpy(random_frames(FRAMES, seed=1))], [[7.0, 8.0]])
    with pytest.raises(ValueError, match="must not go back in time"):
        session.append_encoded(encoded.blocks, [4.0, 8.0], encoded.tokens_in)
    with pytest.raises(RuntimeError, match="3 frames gave 2 blocks"):
        session.append_encoded(encoded.blocks, [7.0, 8.0, 9.0], encoded.tokens_in)
    assert session.frames_seen == FRAMES
    session.close()
    other = StreamingSession(model, tiny_processor(), config=CONFIG)
    with pytest.raises(RuntimeError, match="holds 0 streams for 1 sessions"):
        encode_streams([other], [torch.from_numpy(random_frames(1))], [[0.0]])
    other.close()
