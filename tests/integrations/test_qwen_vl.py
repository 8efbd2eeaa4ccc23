"""What is particular to Qwen2-VL and Qwen2.5-VL on tiny models (float64): temporal slices and
attention windows in the Cacher, mRoPE positions, rope_deltas and decoding after a pruned prefill,
batches, preprocessing, the engine's time-dependent positions. The checks every family shares
are in tests/test_adapters.py."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

import stc
from stc.api import state_of
from stc.integrations.compat import CACHE_ARGUMENT
from stc.cacher import SegmentAttention, SegmentSelection, num_recomputed, segment_quotas, unit_keys
from stc.integrations.engine.session import StreamingSession
from stc.eval.presets import IMAGE_TOKEN, VIDEO_TOKEN, VISION_END, VISION_START
from stc.integrations.processing import QwenVideoPreprocessing, qwen_patchify
from tests.tiny import QWEN_FAMILIES, qwen_video_inputs, random_frames, tiny_qwen, tiny_qwen_processor

EXACT = stc.STCConfig(cache_interval=1, keep_ratio=1.0)
TOKENS = 36  # 24 px / patch 4 -> 6x6 patches per temporal slice
MERGED = 9  # 3x3 merged tokens per slice
QUESTION = "what is in the video ?"

@pytest.fixture(params=list(QWEN_FAMILIES))
def family(request):
    return request.param


@pytest.fixture
def model(family):
    return tiny_qwen(family)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def greedy(model, inputs, n=6):
    return model.generate(**inputs, max_new_tokens=n, do_sample=False)


def vit_features(model, inputs):
    """Merged ViT output [sum t*h*w/4, D] of all videos (through the patched encoder when patched)."""
    with torch.no_grad():
        out = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True)
    return torch.cat(out.pooler_output)


def slices_of(inputs, start, stop):
    """The inputs of one video restricted to temporal slices [start, stop)."""
    rows = TOKENS
    pixels = inputs["pixel_values_videos"][start * rows : stop * rows]
    grid = inputs["video_grid_thw"].clone()
    grid[0, 0] = stop - start
    return {"pixel_values_videos": pixels, "video_grid_thw": grid}


# -- exactness and API ---------------------------------------------------------------------------


def test_plain_generate_with_processor_style_inputs_works_patched(model):
    inputs = qwen_video_inputs(frames=4, smooth=True)
    stc.patch(model, stc.STCConfig())  # defaults: Cacher and Pruner on
    out = greedy(model, inputs, n=3)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_generate_signatures_survive_patching(model):
    before = inspect.signature(model.model.get_video_features)
    stc.patch(model)
    assert inspect.signature(model.model.get_video_features) == before
    assert "pixel_values_videos" in inspect.signature(model.forward).parameters
    assert "mm_token_type_ids" in inspect.signature(model.forward).parameters
    stc.patch(model, stc.STCConfig(pruner=False))
    greedy(model, qwen_video_inputs(frames=4), n=2)  # generate routes kwargs through the wrapped signatures
    assert stc.stats(model)["frames"] == 2


def test_images_pass_through_untouched(model):
    g = torch.Generator().manual_seed(3)
    image = torch.randn(1, 3, 24, 24, generator=g, dtype=torch.float64)  # repeated to fill the temporal patch
    pixels, grid = qwen_patchify(image, 4, 2, 2)
    ids = torch.tensor([[1, 5, VISION_START] + [IMAGE_TOKEN] * MERGED + [VISION_END, 6, 7]])
    inputs = {"input_ids": ids, "pixel_values": pixels, "image_grid_thw": grid, "mm_token_type_ids": (ids == IMAGE_TOKEN).long()}
    ref = logits(model, inputs)
    stc.patch(model, stc.STCConfig(cache_interval=2, update_ratio=0.1, keep_ratio=0.1))
    assert torch.equal(logits(model, inputs), ref)
    assert stc.stats(model)["frames"] == 0


def test_wrong_placeholder_count_is_a_clear_error(model):
    inputs = qwen_video_inputs(frames=4)
    inputs["input_ids"] = torch.cat([inputs["input_ids"][:, :5], inputs["input_ids"][:, 6:]], dim=1)
    inputs["mm_token_type_ids"] = 2 * (inputs["input_ids"] == VIDEO_TOKEN).long()
    stc.patch(model, stc.STCConfig(keep_ratio=0.5))
    with pytest.raises(ValueError, match="video tokens"):
        greedy(model, inputs)


def test_unsupported_model_lists_the_qwen_families():
    with pytest.raises(stc.UnsupportedModelError, match="Qwen2.5-VL"):
        stc.patch(torch.nn.Linear(2, 2))
    assert {"Qwen2-VL", "Qwen2.5-VL"} <= set(stc.supported_families())


# -- Cacher ---------------------------------------------------------------------------------------


def test_partial_update_is_close_but_not_dense_and_counts_tokens(model):
    inputs = qwen_video_inputs(frames=8, smooth=True)  # 4 slices
    dense = vit_features(model, inputs)
    stc.patch(model, stc.STCConfig(cache_interval=2, update_ratio=0.25, pruner=False))
    cached = vit_features(model, inputs)
    s = stc.stats(model)
    assert (s["frames"], s["reference_frames"], s["vit_tokens"]) == (4, 2, 4 * TOKENS)
    assert s["vit_tokens_recomputed"] == 2 * TOKENS + 2 * num_recomputed(TOKENS, 0.25)
    piece = lambda t, f: t[f * MERGED : (f + 1) * MERGED]
    for f in (0, 2):  # reference slices are dense
        torch.testing.assert_close(piece(cached, f), piece(dense, f), rtol=0, atol=1e-10)
    assert not torch.allclose(piece(cached, 1), piece(dense, 1))
    assert F.cosine_similarity(cached.flatten(), dense.flatten(), dim=0) > 0.9


def test_recomputed_tokens_are_the_least_similar_keys_within_each_attention_segment(model, family):
    inputs = qwen_video_inputs(frames=4, smooth=True)  # slice 0 reference, slice 1 reuses it
    calls = {}
    blocks = model.model.visual.blocks

    def record(i):
        def hook(module, args, kwargs):
            calls[i] = (args[0].detach(), kwargs["cu_seqlens"])

        return hook

    handles = [block.register_forward_pre_hook(record(i), with_kwargs=True) for i, block in enumerate(blocks)]
    stc.patch(model, stc.STCConfig(cache_interval=2, update_ratio=0.25, pruner=False))
    vit_features(model, inputs)
    for handle in handles:
        handle.remove()
    k = num_recomputed(TOKENS, 0.25)
    windowed = []
    for i, block in enumerate(blocks):
        x, cu = calls[i]  # input of block i for both slices (slice 1 after the selective blocks before it)
        width = block.attn.qkv.in_features
        keys = block.attn.qkv(block.norm1(x))[:, width : 2 * width].view(2, TOKENS, width)
        sims = F.cosine_similarity(keys[1], keys[0], dim=-1)
        bounds = [b for b in cu.tolist() if b <= TOKENS]
        sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        quotas = segment_quotas(sizes, k)
        assert sum(quotas) == k
        expected = []
        for (a, b), quota in zip(zip(bounds[:-1], bounds[1:]), quotas):
            expected += (a + torch.argsort(sims[a:b])[:quota]).tolist()
        assert state_of(model).call.recomputed[i][0].tolist() == sorted(expected)
        windowed.append(len(sizes) > 1)
    # Qwen2.5-VL: block 0 uses windows (4 windows of 16/8/8/4 patches), block 1 full attention.
    assert windowed == ([True, False] if family == "qwen2_5_vl" else [False, False])


def test_segment_selection_core_matches_a_per_segment_loop():
    g = torch.Generator().manual_seed(1)
    keys, ref = torch.randn(3, 20, 8, generator=g), unit_keys(torch.randn(1, 20, 8, generator=g))
    sizes = [7, 5, 6, 2]
    quotas = segment_quotas(sizes, 6)
    assert quotas == [2, 1, 2, 1]  # shares 2.1, 1.5, 1.8, 0.6: largest remainders and sum(segment_quotas(sizes, 19)) == 19
    got = SegmentSelection(sizes, quotas)(keys, ref, sum(quotas))
    sims = F.cosine_similarity(keys, ref, dim=-1)
    for f in range(3):
        expected, start = [], 0
        for size, quota in zip(sizes, quotas):
            expected += (start + torch.argsort(sims[f, start : start + size])[:quota]).tolist()
            start += size
        assert got[f].tolist() == sorted(expected)


@pytest.mark.parametrize("quota_total", [6, 1, 20])
def test_segment_attention_equals_one_masked_attention_over_the_frame(quota_total):
    g = torch.Generator().manual_seed(2)
    sizes, heads, dim = [7, 5, 6, 2], 2, 4
    q_all, k, v = (torch.randn(3, 20, heads, dim, generator=g, dtype=torch.float64) for _ in range(3))
    quotas = segment_quotas(sizes, quota_total)
    keys, ref = torch.randn(3, 20, 8, generator=g), unit_keys(torch.randn(1, 20, 8, generator=g))
    index = SegmentSelection(sizes, quotas)(keys, ref, quota_total)  # [3, k] ascending, grouped by segment
    q = q_all.gather(1, index.view(3, -1, 1, 1).expand(-1, -1, heads, dim))
    segment = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    mask = (segment[index].unsqueeze(-1) == segment.view(1, 1, -1)).unsqueeze(1)
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    got = SegmentAttention(sizes, quotas)(q, k, v)
    torch.testing.assert_close(got, expected.transpose(1, 2), rtol=0, atol=1e-12)


def test_each_call_is_its_own_stream_outside_stream_context(model):
    inputs = qwen_video_inputs(frames=6, smooth=True)
    stc.patch(model, stc.STCConfig(cache_interval=2, keep_ratio=0.5))
    first, second = greedy(model, inputs), greedy(model, inputs)
    assert torch.equal(first, second)
    assert stc.stats(model)["frames"] == 3


def test_stream_context_carries_state_across_calls(model):
    inputs = qwen_video_inputs(frames=12, smooth=True)  # 6 slices
    stc.patch(model, stc.STCConfig(cache_interval=4, update_ratio=0.5, pruner=False))
    whole = vit_features(model, inputs)
    with stc.stream(model):
        parts = [vit_features(model, slices_of(inputs, 0, 3)), vit_features(model, slices_of(inputs, 3, 6))]
        assert stc.stats(model)["frames"] == 6
        assert stc.stats(model)["reference_frames"] == 2  # slices 0 and 4
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=1e-10)
    assert stc.stats(model)["frames"] == 0  # leaving the stream resets


def test_cacher_refuses_videos_of_different_sizes_in_one_call(model):
    a = qwen_video_inputs(frames=2, size=(24, 24))
    b = qwen_video_inputs(frames=2, size=(16, 24))
    pixels = torch.cat([a["pixel_values_videos"], b["pixel_values_videos"]])
    grid = torch.cat([a["video_grid_thw"], b["video_grid_thw"]])
    stc.patch(model, stc.STCConfig(cache_interval=2, pruner=False))
    with pytest.raises(ValueError, match="share a frame size"):
        model.model.get_video_features(pixels, grid)
    stc.patch(model, stc.STCConfig(cacher=False, pruner=False))
    model.model.get_video_features(pixels, grid)  # without the Cacher any mix is fine


# -- Pruner ---------------------------------------------------------------------------------------


def test_pruner_keeps_round_n_ratio_per_slice_and_generate_returns_full_prompt(model):
    inputs = qwen_video_inputs(frames=5)
    ids = inputs["input_ids"]
    stc.patch(model, stc.STCConfig(cacher=False, keep_ratio=0.5))
    out = greedy(model, inputs, n=4)
    assert out.shape == (1, ids.shape[1] + 4)
    assert torch.equal(out[:, : ids.shape[1]], ids)
    s = stc.stats(model)
    assert (s["llm_tokens_in"], s["llm_tokens_kept"]) == (3 * MERGED, 3 * round(MERGED * 0.5))
    mask = state_of(model).call.keep_mask[0]
    video = ids[0] == VIDEO_TOKEN
    assert int(mask[video].sum()) == 3 * round(MERGED * 0.5)
    assert bool(mask[~video].all())


def test_decoding_after_pruned_prefill_continues_at_the_unpruned_positions(model):
    """generate after a pruned prefill = a hand-written loop decoding at the positions the
    unpruned sequence continues at; and rope_deltas carry the dropped tokens, so a decode step
    that derives its positions from the cache length lands on the same positions."""
    inputs = qwen_video_inputs(frames=6)
    ids = inputs["input_ids"]
    unpruned, deltas = model.model.get_rope_index(ids, inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"])
    next_position = int(unpruned[:, 0, -1].max()) + 1  # the prompt ends in text: all three rows agree
    assert torch.equal(unpruned[:, 0, -1], torch.full((3,), next_position - 1))
    stc.patch(model, stc.STCConfig(cacher=False, keep_ratio=0.5))
    out = greedy(model, inputs, n=3)
    kwargs = model._stc_adapter.prune_inputs(model, state_of(model), dict(inputs))
    dropped = int((~state_of(model).call.keep_mask).sum())
    assert dropped == 3 * (MERGED - round(MERGED * 0.5))
    assert torch.equal(model.model.rope_deltas, deltas + dropped)
    assert kwargs["position_ids"].shape == (4, 1, ids.shape[1] - dropped)
    for explicit in (True, False):
        with torch.no_grad():
            step = model.__class__.forward(model, **kwargs, use_cache=True)
            cache, tokens, position = getattr(step, CACHE_ARGUMENT), [], next_position
            for _ in range(3):
                token = step.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(token)
                extra = {"position_ids": torch.full((3, 1, 1), position)} if explicit else {}
                step = model.__class__.forward(model, input_ids=token, **{CACHE_ARGUMENT: cache}, use_cache=True, **extra)
                position += 1
        assert out[0, ids.shape[1] :].tolist() == torch.cat(tokens, 1)[0].tolist()


def test_batch_of_videos_of_different_lengths_generates_like_single_rows(model):
    long, short = qwen_video_inputs(frames=6, seed=4, smooth=True), qwen_video_inputs(frames=3, seed=5, smooth=True)
    pad = long["input_ids"].shape[1] - short["input_ids"].shape[1]
    ids = torch.stack([long["input_ids"][0], torch.cat([torch.zeros(pad, dtype=torch.long), short["input_ids"][0]])])
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": 2 * (ids == VIDEO_TOKEN).long(),
        "pixel_values_videos": torch.cat([long["pixel_values_videos"], short["pixel_values_videos"]]),
        "video_grid_thw": torch.cat([long["video_grid_thw"], short["video_grid_thw"]]),
    }
    stc.patch(model, stc.STCConfig(cache_interval=2, update_ratio=0.5, keep_ratio=0.5))
    out = greedy(model, batch, n=3)
    assert torch.equal(out[:, : ids.shape[1]], ids)
    assert stc.stats(model)["frames"] == 3 + 2
    for b, single in enumerate((long, short)):
        assert out[b, -3:].tolist() == greedy(model, single, n=3)[0, -3:].tolist()


# -- preprocessing and the streaming engine -------------------------------------------------------


def test_qwen_preprocessing_layout_and_odd_frame_count():
    frames = random_frames(5, size=22, seed=2)  # 22 px -> smart_resize to 24 px (multiple of 8)
    steps = QwenVideoPreprocessing(min_pixels=64, max_pixels=32 * 32, patch_size=4)
    pixels, grid = steps(frames, dtype=torch.float64)
    assert grid.tolist() == [[3, 6, 6]] and pixels.shape == (3 * 36, 3 * 2 * 4 * 4)
    # Undo the patch layout: rows (t, h-block, w-block, h, w), columns (C, frame in slice, y, x).
    video = pixels.view(3, 3, 3, 2, 2, 3, 2, 4, 4).permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(6, 3, 24, 24)
    assert torch.equal(video[4], video[5])  # the odd frame count repeats the last frame
    resized = F.interpolate(torch.as_tensor(frames).permute(0, 3, 1, 2).float(), size=(24, 24), mode="bicubic",
                            antialias=True, align_corners=False).round().clamp(0, 255)
    mean, std = torch.tensor(steps.mean).view(1, 3, 1, 1), torch.tensor(steps.std).view(1, 3, 1, 1)
    torch.testing.assert_close(video[:5], ((resized.double() / 255 - mean) / std), rtol=0, atol=1e-5)


def offline_generate(model, session, frames, question, n, sample_fps=1.0):
    """Greedy tokens of plain generate over [header][all slices' tokens][prompt], with the
    model's own mRoPE positions, and those positions."""
    pixels, grid = session.adapter.preprocess(model, session.processor, frames)
    with torch.no_grad():
        features = model.model.get_video_features(pixels, grid, return_dict=True).pooler_output
    ids = session.template.header_ids() + [VIDEO_TOKEN] * features[0].shape[0] + session.template.prompt_ids(question)
    ids = torch.tensor([ids])
    extra = {}
    if model.config.model_type == "qwen2_5_vl":
        extra["second_per_grid_ts"] = torch.tensor([2 / sample_fps])  # what Qwen's processor passes
    kinds = 2 * (ids == VIDEO_TOKEN).long()
    out = model.generate(input_ids=ids, mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=features)},
                         video_grid_thw=grid, mm_token_type_ids=kinds, max_new_tokens=n, do_sample=False, **extra)
    positions, _ = model.model.get_rope_index(ids, kinds, video_grid_thw=grid, **extra)
    return out[0, ids.shape[1] :].tolist(), positions[:, 0]


@pytest.mark.parametrize("sample_fps", [1.0, 2.0])
def test_engine_full_window_and_topk_reproduce_offline_generate(model, sample_fps):
    frames = random_frames(8, size=24)  # 4 slices: more than the 3x3 grid's side, so the temporal rows matter
    with StreamingSession(model, tiny_qwen_processor(), n_local=100000, topk=1000, sample_fps=sample_fps) as session:
        assert session.template.header.endswith("<|vision_start|>") and session.template.suffix.startswith("<|vision_end|>")
        session.append_frames(frames[:2])
        session.append_frames(frames[2:])
        answer = session.ask(QUESTION, max_new_tokens=6)
        expected, positions = offline_generate(model, session, frames, QUESTION, 6, sample_fps)
        # The engine's positions are the model's: header, four slices, then the prompt.
        sink = session.sink_tokens
        visual, extent = session.adapter.visual_positions(sink, [session.store.layout(i) for i in session.store.ids])
        prompt = session.template.prompt_ids(QUESTION)
        engine = torch.cat([session.adapter.text_positions(0, sink), visual,
                            session.adapter.text_positions(sink + extent, len(prompt))], dim=1)
        assert torch.equal(engine, positions)
        assert session.timestamps == [2 * i / sample_fps for i in range(4)]  # a block's first frame
    assert answer.token_ids == expected
    assert answer.frames_seen == 8
    assert answer.retrieved[0] == [0, 1, 2, 3]  # one block per temporal slice


def test_engine_with_stc_counts_slices_and_prunes_blocks(model):
    frames = random_frames(7, size=24, seed=6)  # odd: the last slice repeats frame 6
    config = stc.STCConfig(cache_interval=2, update_ratio=0.25, keep_ratio=0.5)
    with StreamingSession(model, tiny_qwen_processor(), config=config, n_local=100000, topk=1000, vit_batch=3) as session:
        report = session.append_frames(frames[:4])
        session.append_frames(frames[4:])
        stats = stc.stats(model)
        assert (report.frames, report.tokens_in, report.tokens_kept) == (4, 2 * MERGED, 2 * round(MERGED * 0.5))
        assert (stats["frames"], stats["reference_frames"]) == (4, 2)  # slices; the Cacher spans calls
        assert session.frames_seen == 7 and len(session.store) == 4
        assert all(layout.shape == (2, round(MERGED * 0.5)) for layout in map(session.store.layout, session.store.ids))
        assert session.ask(QUESTION, max_new_tokens=2).retrieved[0] == [0, 1, 2, 3]
    assert not stc.is_patched(model)


def test_a_hugging_face_video_processor_is_used_when_the_processor_has_one():
    model = tiny_qwen("qwen2_vl")
    steps = tiny_qwen_processor().frames
    calls = []

    class VideoProcessor:  # stands in for Qwen2VLVideoProcessor (needs torchvision)
        def __call__(self, videos, return_tensors):
            calls.append(videos[0].shape)
            pixels, grid = steps(videos[0])
            return {"pixel_values_videos": pixels, "video_grid_thw": grid}

    class Processor:
        video_processor = VideoProcessor()

    adapter = stc.api.adapter_for(model)
    pixels, grid = adapter.preprocess(model, Processor(), random_frames(3, size=24))
    assert calls == [(3, 24, 24, 3)] and grid.tolist() == [[2, 6, 6]] and pixels.dtype == torch.float64
