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
from stc.peers import MethodConfig
from stc.integrations.engine.batch import batch_key, encode_streams
from stc.integrations.engine.prompt import BlockText, PromptTemplate
from stc.integrations.engine.session import StreamingSession
from stc.integrations.processing import tokenizer_of
from tests.families import FAMILIES, engine_frames, tiny_qwen3
from tests.tiny import random_frames, tiny_llava, tiny_processor, tiny_qwen

CONFIG = STCConfig(cache_interval=3, update_ratio=0.5, keep_ratio=0.5)
STREAMS, CALLS, FRAMES = 3, 3, 2
BUILDERS = {"llava_onevision": tiny_llava, "qwen2_5_vl": lambda dtype: tiny_qwen("qwen2_5_vl", dtype=dtype),
            "qwen3_5": lambda dtype: tiny_qwen3("qwen3.5-tiny", dtype=dtype)}


def _blocks(blocks):
    extras = None if blocks.extras is None else [e.tolist() for e in blocks.extras]
    return ([t.tolist() for t in blocks.tokens], [k.tolist() for k in blocks.kept], [x.tolist() for x in blocks.layouts],
            extras)


# float64 on this CPU (MKL) only at LLaVA's shapes: its float64 GEMM rounds the last M mod 4 rows of
# a product apart, and Qwen's merger (t*h*w/4 rows per video) and cached slices (k rows) need not be
# multiples of 4, so a row can differ by an ulp between one video and several (docs/serve.md)
CASES = [("llava_onevision", torch.float64), ("llava_onevision", torch.float32), ("qwen2_5_vl", torch.float32),
         ("qwen3_5", torch.float32)]


# the Pruner's per-stream state beyond its history: the adaptive budget and the Cacher's signal
PER_STREAM_PRUNER = CONFIG.replace(pruner_budget="adaptive", pruner_scoring="cacher_change")


@pytest.mark.parametrize("config", [CONFIG, PER_STREAM_PRUNER], ids=["stc", "adaptive-cacher_change"])
@pytest.mark.parametrize("family_name, dtype", CASES)
def test_several_streams_in_one_encoder_call_are_each_as_alone(family_name, dtype, config):
    family = FAMILIES[family_name]
    model = stc.patch(BUILDERS[family_name](dtype), config)
    processor = family.processor()
    adapter, state = adapter_of(model), state_of(model)
    text = BlockText(PromptTemplate(tokenizer_of(processor), adapter.video_placeholder, None), adapter.decoder_driver(model))
    frames = 2 * family.frames_per_block
    videos = [engine_frames(family, CALLS * frames, seed=s) for s in range(STREAMS)]
    clips = [[adapter.preprocess(model, processor, v[c * frames : (c + 1) * frames]) for c in range(CALLS)] for v in videos]
    times = [[float(c * frames + i) for i in range(frames)] for c in range(CALLS)]
    alone = []
    for s in range(STREAMS):
        with torch.no_grad(), stc.stream(model):
            alone.append([_blocks(adapter.stream_blocks(model, state, clips[s][c], times[c], text)) for c in range(CALLS)])
            alone[-1].append(state.streams[0].stats.as_dict())
    with torch.no_grad(), stc.stream(model):
        together = [[] for _ in range(STREAMS)]
        for c in range(CALLS):
            rows = adapter.stream_blocks_batch(model, state, [clips[s][c] for s in range(STREAMS)], [times[c]] * STREAMS,
                                               [text] * STREAMS)
            for s, blocks in enumerate(rows):
                together[s].append(_blocks(blocks))
        for s in range(STREAMS):
            together[s].append(state.streams[s].stats.as_dict())
    assert together == alone
    stats = [a[-1] for a in alone]
    assert all(st["vit_tokens_recomputed"] < st["vit_tokens"] for st in stats), "the Cacher reused tokens"
    assert alone[0][0] != alone[1][0], "the streams differ"
    stc.unpatch(model)


def test_clips_of_different_grids_are_not_encoded_together():
    family = FAMILIES["qwen2_5_vl"]
    model = stc.patch(family.build(), CONFIG)
    adapter = adapter_of(model)
    small, large = (adapter.preprocess(model, family.processor(), random_frames(2, size=size)) for size in (16, 24))
    with pytest.raises(ValueError, match="all with one grid"):
        adapter.stream_blocks_batch(model, state_of(model), [small, large], [[0.0, 1.0]] * 2, [None] * 2)
    stc.unpatch(model)


def test_what_cannot_share_an_encoder_call_has_no_batch_key():
    model = tiny_llava()
    chunk = torch.zeros(2, 28, 28, 3, dtype=torch.uint8)
    keys = {}
    for name, config in {"stc": CONFIG, "off": None, "gate": STCConfig(change_threshold=0.1),
                         "peer": MethodConfig("visionzip", keep_ratio=0.5)}.items():
        session = StreamingSession(model, tiny_processor(), config=config)
        keys[name] = batch_key(session, chunk)
        session.close()
    assert keys["stc"] is not None and keys["off"] is not None and keys["stc"] != keys["off"]
    assert keys["gate"] is None and keys["peer"] is None
    assert batch_key(session, chunk[:1]) != keys["off"], "another chunk length"


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
