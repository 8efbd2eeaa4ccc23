"""The Pruner's adaptive budget (STCConfig.pruner_budget="adaptive") through both adapter families
and the streaming engine: frames keep different numbers of tokens, and the prompt, its positions
and the engine's blocks (storage, retrieval, the window, eviction) follow. Also what the adapters
hand the Pruner's cacher_change scorer: the Cacher's recompute share on the LLM's token grid."""

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

import stc
from stc.api import state_of
from stc.eval.presets import VIDEO_TOKEN
from stc.integrations.engine.session import StreamingSession
from tests.integrations.test_engine import EXACT, QUESTION
from tests.tiny import (LLAVA_TOKENS_PER_FRAME, QWEN_FAMILIES, llava_video_inputs, qwen_video_inputs, random_frames,
                        tiny_llava, tiny_processor, tiny_qwen, tiny_qwen_processor)

ADAPTIVE = stc.STCConfig(cacher=False, keep_ratio=0.5, pruner_budget="adaptive")
QWEN_SLICE_PATCHES, QWEN_MERGED = 36, 9  # 24 px / patch 4: 6x6 patches, 3x3 merged tokens per slice


def frames_with_repeats(count: int, size: int = 28, seed: int = 0, repeats=((3, 2), (4, 2))):
    """`random_frames` where frame a is a copy of frame b for each (a, b) of `repeats`."""
    frames = random_frames(count, size=size, seed=seed)
    for a, b in repeats:
        frames[a] = frames[b]
    return frames


def counts_of(kept) -> list[int]:
    return [len(p) for p in kept]


# -- LLaVA-OneVision -------------------------------------------------------------------------------


def test_llava_prefill_with_per_frame_counts_equals_attending_to_the_kept_tokens_only(llava):
    """The pruned prefill's logits are the unpatched model's over the whole prompt with the dropped
    video tokens masked out (same positions), whatever each frame keeps."""
    pixels, ids = llava_video_inputs(frames=6, seed=2)
    pixels[:, 3] = pixels[:, 2]  # a repeated frame
    with stc.patched(llava, ADAPTIVE):
        with torch.no_grad():
            pruned = llava(input_ids=ids, pixel_values_videos=pixels).logits
        keep = state_of(llava).call.keep_mask
        counts = counts_of(state_of(llava).call.kept[0])
    assert len(set(counts)) > 1 and counts[3] == 1 and sum(counts) == 6 * 2
    positions = torch.arange(ids.shape[1]).view(1, -1)
    with torch.no_grad():
        whole = llava(input_ids=ids, pixel_values_videos=pixels, attention_mask=keep.long(), position_ids=positions).logits
    torch.testing.assert_close(pruned[0], whole[0][keep[0]], rtol=1e-9, atol=1e-9)


def test_llava_engine_stores_and_retrieves_blocks_of_different_sizes(llava, processor):
    """Each frame's block holds its own count; with the whole stream in view the answer is plain
    generate's over every frame's kept tokens, one frame after the other."""
    frames = frames_with_repeats(8, seed=3)
    with StreamingSession(llava, processor, config=ADAPTIVE, **EXACT) as session:
        first, second = session.append_frames(frames[:5]), session.append_frames(frames[5:])
        kept = first.kept + second.kept
        counts = counts_of(kept)
        assert len(set(counts)) > 1 and sum(counts) == first.tokens_kept + second.tokens_kept
        assert [session.store.tokens(b) for b in session.store.ids] == counts
        answer = session.ask(QUESTION, max_new_tokens=5)
        header, prompt = session.template.header_ids(), session.template.prompt_ids(QUESTION)
    assert answer.retrieved[0] == list(range(8))
    assert answer.context_tokens == len(header) + sum(counts)
    with torch.no_grad():  # the model is unpatched again; no Cacher: the same features
        features = llava.model.get_video_features(processor.frames(frames)[None].to(llava.dtype), return_dict=True)
    per_frame = features.pooler_output[0, :-1].view(8, LLAVA_TOKENS_PER_FRAME, -1)
    visual = torch.cat([per_frame[f, p] for f, p in enumerate(kept)])[None]
    ids = torch.tensor([header + [VIDEO_TOKEN] * visual.shape[1] + prompt])
    out = llava.generate(input_ids=ids, mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=visual)},
                         max_new_tokens=5, do_sample=False)
    assert answer.token_ids == out[0, ids.shape[1] :].tolist()


def test_llava_engine_window_retrieval_and_eviction_with_different_block_sizes():
    """A window that cuts blocks of different sizes holds exactly n_local tokens; retrieval counts
    each retrieved block's own tokens; a memory budget is never exceeded and evicts whole blocks."""
    model = tiny_llava(dtype=torch.float32)
    frames = frames_with_repeats(30, seed=4, repeats=[(t, t - 1) for t in range(3, 30, 4)])
    config = ADAPTIVE.replace(keep_ratio=0.75)
    with StreamingSession(model, tiny_processor(), config=config, n_local=5, topk=1000) as probe:
        probe.append_frames(frames[:12])
        budget = probe.memory()["total_bytes"]  # about twelve blocks
    with StreamingSession(model, tiny_processor(), config=config, n_local=5, topk=3, kv_bits=2, sink_frames=1,
                          memory_budget=budget, vit_batch=3) as session:
        counts = []
        for start in range(0, 30, 3):
            counts += counts_of(session.append_frames(frames[start : start + 3]).kept)
            memory = session.memory()
            assert memory["total_bytes"] <= budget
            window = sum(session.store.tokens(b) for b in session.kv.window) - session.kv.window_skip
            assert window == session.kv.layer(0).window_tokens == min(5, sum(counts[1:]))
        assert len(set(counts)) > 2
        assert memory["evicted_blocks"] > 0 and memory["blocks"] + memory["evicted_blocks"] == 30
        assert all(session.store.tokens(b) == counts[b] for b in session.store.ids)  # ids are frame indices
        answer = session.ask(QUESTION, max_new_tokens=2)
        header = len(session.template.header_ids())
        assert answer.context_tokens == header + sum(counts[b] for b in answer.retrieved[0])


# -- Qwen2-VL / Qwen2.5-VL ------------------------------------------------------------------------


@pytest.fixture(params=list(QWEN_FAMILIES))
def qwen(request):
    return tiny_qwen(request.param)


def test_qwen_prefill_with_per_slice_counts_keeps_the_unpruned_mrope_positions(qwen):
    """Slices keep different counts; the kept prompt's mRoPE positions are the unpruned sequence's
    at the kept tokens, its logits the unpatched model's over the whole prompt with the dropped
    video tokens masked out, and decoding continues at the unpruned positions."""
    inputs = qwen_video_inputs(frames=8, seed=3)
    rows = QWEN_SLICE_PATCHES
    inputs["pixel_values_videos"][2 * rows : 3 * rows] = inputs["pixel_values_videos"][rows : 2 * rows]  # slice 2 = slice 1
    ids = inputs["input_ids"]
    unpruned, deltas = qwen.model.get_rope_index(ids, inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"])
    with stc.patched(qwen, ADAPTIVE):
        kwargs = qwen._stc_adapter.prune_inputs(qwen, state_of(qwen), dict(inputs))
        keep = state_of(qwen).call.keep_mask
        counts = counts_of(state_of(qwen).call.kept[0])
        assert len(set(counts)) > 1 and counts[2] < counts[1] and abs(sum(counts) / 4 - round(QWEN_MERGED * 0.5)) <= 1  # the running mean: within a token of the fixed count
        dropped = int((~keep).sum())
        assert dropped == 4 * QWEN_MERGED - sum(counts)
        assert torch.equal(kwargs["position_ids"][1:], unpruned[:, :, keep[0]])
        assert torch.equal(qwen.model.rope_deltas, deltas + dropped)
        with torch.no_grad():
            pruned = qwen(**inputs).logits
        out = qwen.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert torch.equal(out[:, : ids.shape[1]], ids) and out.shape[1] == ids.shape[1] + 3
    text = torch.arange(ids.shape[1]).view(1, 1, -1)
    with torch.no_grad():
        whole = qwen(**inputs, attention_mask=keep.long(), position_ids=torch.cat([text, unpruned])).logits
    torch.testing.assert_close(pruned[0], whole[0][keep[0]], rtol=1e-9, atol=1e-9)


def test_qwen_engine_places_blocks_of_different_sizes_at_the_models_positions(qwen):
    """Each slice's block holds its count, and the engine places its kept tokens where the model
    places those tokens of the whole video (temporal, row and column)."""
    frames = frames_with_repeats(8, size=24, seed=5, repeats=((4, 2), (5, 3)))  # slice 2 repeats slice 1
    with StreamingSession(qwen, tiny_qwen_processor(), config=ADAPTIVE, n_local=100000, topk=1000) as session:
        kept = session.append_frames(frames[:4]).kept + session.append_frames(frames[4:]).kept
        counts = counts_of(kept)
        assert len(set(counts)) > 1 and counts[2] < counts[1]
        assert [session.store.tokens(b) for b in session.store.ids] == counts
        layouts = [session.store.layout(b) for b in session.store.ids]
        assert [layout.shape for layout in layouts] == [(2, c) for c in counts]
        start = session.sink_tokens
        engine, _ = session.adapter.visual_positions(start, layouts)
        pixels, grid = session.adapter.preprocess(qwen, session.processor, frames)
        video = torch.tensor([[VIDEO_TOKEN] * (4 * QWEN_MERGED)])
        extra = {"second_per_grid_ts": torch.tensor([2.0])} if qwen.config.model_type == "qwen2_5_vl" else {}
        model_positions, _ = qwen.model.get_rope_index(video, 2 * torch.ones_like(video), video_grid_thw=grid, **extra)
        flat = torch.cat([f * QWEN_MERGED + p for f, p in enumerate(kept)])
        assert torch.equal(engine, model_positions[:, 0, flat] + start)
        answer = session.ask(QUESTION, max_new_tokens=2)
        assert answer.retrieved[0] == [0, 1, 2, 3] and len(answer.token_ids) == 2


# -- the Cacher's change signal (pruner_scoring "cacher_change") ----------------------------------


def test_llava_hands_the_cacher_recompute_share_to_the_pruner_on_the_token_grid(llava):
    """Frame 1 changes only in its top-left quadrant (one pooled token of 2x2): the Cacher
    recomputes patches there, the share pooled onto the token grid is highest there, and
    cacher_change keeps that token; frame 0, a reference, carries no signal (NaN)."""
    pixels, ids = llava_video_inputs(frames=2, seed=7)
    pixels[:, 1] = pixels[:, 0]
    pixels[:, 1, :, :14, :14] = 3 * torch.randn(3, 14, 14, generator=torch.Generator().manual_seed(8), dtype=pixels.dtype)
    config = stc.STCConfig(cache_interval=2, update_ratio=0.25, keep_ratio=0.25, pruner_scoring="cacher_change",
                           cut_threshold=None)
    with stc.patched(llava, config):
        state = state_of(llava)
        kwargs = llava._stc_adapter.prune_inputs(llava, state, {"input_ids": ids, "pixel_values_videos": pixels})
        share = state.call.recompute_share
        context = llava._stc_adapter.selection_contexts(llava, state, pixels)[0]
        kept = [p.tolist() for p in state.call.kept[0]]
    assert share.shape == (2, 16) and torch.isnan(share[0]).all()
    assert abs(float(share[1].sum()) - 4) < 1e-9  # four of sixteen patches per block
    assert torch.isnan(context.recomputed[0]).all() and int(context.recomputed[1].argmax()) == 0
    assert kept[1] == [0] and kwargs["input_ids"].shape[1] == ids.shape[1] - 2 * 3


@pytest.mark.parametrize("corner", [0, 2, 6, 8])
def test_qwen_hands_the_cacher_recompute_share_to_the_pruner_per_merged_token(qwen, corner):
    """Slice 1 repeats slice 0 but for one merged token's 8x8 pixels: that token's share is the
    highest (Qwen2.5-VL: after undoing the window order) and cacher_change keeps it; slice 0, a
    reference, carries no signal (NaN)."""
    inputs = qwen_video_inputs(frames=4, seed=9)
    rows, merge = QWEN_SLICE_PATCHES, 4
    pixels = inputs["pixel_values_videos"]
    pixels[rows : 2 * rows] = pixels[:rows]
    token = slice(rows + corner * merge, rows + (corner + 1) * merge)  # its four patches (both frames of the slice)
    pixels[token] = 3 * torch.randn(merge, pixels.shape[1], generator=torch.Generator().manual_seed(10), dtype=pixels.dtype)
    config = stc.STCConfig(cache_interval=2, update_ratio=0.25, keep_ratio=1 / QWEN_MERGED, pruner_scoring="cacher_change",
                           cut_threshold=None)
    with stc.patched(qwen, config):
        state = state_of(qwen)
        qwen._stc_adapter.prune_inputs(qwen, state, dict(inputs))
        context = qwen._stc_adapter.selection_contexts(state, pixels, inputs["video_grid_thw"])[0]
        kept = [p.tolist() for p in state.call.kept[0]]
    share = context.recomputed
    assert share.shape == (2, QWEN_MERGED) and torch.isnan(share[0]).all()
    assert int(share[1].argmax()) == corner and float(share[1, corner]) > float(share[1].sort().values[-2])
    assert kept[1] == [corner]
