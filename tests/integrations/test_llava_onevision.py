"""What is particular to LLaVA-OneVision on a tiny model (float64): Cacher token choice, the
Pruner's newline token, positions after a pruned prefill, padded batches, API behaviour. The
checks every family shares are in tests/test_adapters.py."""

import inspect

import pytest
import torch

import stc
from stc.api import state_of
from stc.integrations.compat import CACHE_ARGUMENT
from stc.eval.presets import IMAGE_TOKEN, VIDEO_TOKEN
from tests.tiny import llava_video_inputs

EXACT = stc.STCConfig(cache_interval=1, keep_ratio=1.0)


def logits(llava, pixels, ids):
    with torch.no_grad():
        return llava(input_ids=ids, pixel_values_videos=pixels).logits


def greedy(llava, pixels, ids, n=6):
    return llava.generate(input_ids=ids, pixel_values_videos=pixels, max_new_tokens=n, do_sample=False)


def vit_hidden(llava, pixels):
    with torch.no_grad():
        return llava.model.get_video_features(pixels, return_dict=True).pooler_output


def test_partial_update_is_close_but_not_dense_and_counts_tokens(llava):
    pixels, _ = llava_video_inputs(frames=4, smooth=True)
    dense = vit_hidden(llava, pixels)
    stc.patch(llava, stc.STCConfig(cache_interval=2, update_ratio=0.25, pruner=False))
    cached = vit_hidden(llava, pixels)
    s = stc.stats(llava)
    assert (s["frames"], s["reference_frames"], s["vit_tokens"]) == (4, 2, 64)
    assert s["vit_tokens_recomputed"] == 2 * 16 + 2 * 4
    frame = lambda t, f: t[0, f * 4 : (f + 1) * 4]
    for f in (0, 2):  # reference frames are dense
        torch.testing.assert_close(frame(cached, f), frame(dense, f), rtol=0, atol=1e-10)
    assert not torch.allclose(frame(cached, 1), frame(dense, 1))
    cos = torch.nn.functional.cosine_similarity(cached.flatten(), dense.flatten(), dim=0)
    assert cos > 0.9


def test_recomputed_tokens_are_the_least_similar_keys(llava):
    pixels, _ = llava_video_inputs(frames=2, smooth=True)
    keys = []
    layer0 = llava.model.vision_tower.encoder.layers[0]
    handle = layer0.self_attn.k_proj.register_forward_hook(lambda m, a, o: keys.append(o))
    vit_hidden(llava, pixels)  # unpatched: layer 0's keys of both frames (its input is the same with STC)
    handle.remove()
    ref_keys, cur_keys = keys[0][0], keys[0][1]
    stc.patch(llava, stc.STCConfig(cache_interval=2, update_ratio=0.25, pruner=False))
    vit_hidden(llava, pixels)
    sims = torch.nn.functional.cosine_similarity(cur_keys, ref_keys, dim=-1)
    expected = sorted(torch.argsort(sims)[:4].tolist())
    assert state_of(llava).call.recomputed[0][0].tolist() == expected


def test_each_call_is_its_own_stream_outside_stream_context(llava):
    pixels, ids = llava_video_inputs(frames=3, smooth=True)
    stc.patch(llava, stc.STCConfig(cache_interval=2, keep_ratio=0.5))
    first, second = greedy(llava, pixels, ids), greedy(llava, pixels, ids)
    assert torch.equal(first, second)
    assert stc.stats(llava)["frames"] == 3


def test_stream_context_carries_state_across_calls(llava):
    pixels, _ = llava_video_inputs(frames=6, smooth=True)
    config = stc.STCConfig(cache_interval=4, update_ratio=0.5, pruner=False)
    stc.patch(llava, config)
    whole = vit_hidden(llava, pixels)
    with stc.stream(llava):
        parts = [vit_hidden(llava, pixels[:, :3]), vit_hidden(llava, pixels[:, 3:])]
        assert stc.stats(llava)["frames"] == 6
        assert stc.stats(llava)["reference_frames"] == 2  # frames 0 and 4
    merged = torch.cat([parts[0][:, :-1], parts[1][:, :-1], parts[1][:, -1:]], dim=1)
    torch.testing.assert_close(merged, whole, rtol=0, atol=1e-10)
    assert stc.stats(llava)["frames"] == 0  # leaving the stream resets
    stc.reset(llava)


def test_pruner_keeps_round_n_ratio_per_frame_and_generate_returns_full_prompt(llava):
    pixels, ids = llava_video_inputs(frames=5)
    stc.patch(llava, stc.STCConfig(cacher=False, keep_ratio=0.5))
    out = greedy(llava, pixels, ids, n=4)
    assert out.shape == (1, ids.shape[1] + 4)
    assert torch.equal(out[:, : ids.shape[1]], ids)
    s = stc.stats(llava)
    assert (s["llm_tokens_in"], s["llm_tokens_kept"]) == (5 * 4, 5 * 2)
    mask = state_of(llava).call.keep_mask[0]
    video = ids[0] == VIDEO_TOKEN
    assert int(mask[video].sum()) == 5 * 2 + 1  # kept tokens + the newline
    assert bool(mask[~video].all())


def test_decoding_after_pruned_prefill_uses_logical_positions(llava):
    """Greedy tokens from generate equal a manual loop that continues at position L."""
    pixels, ids = llava_video_inputs(frames=3)
    stc.patch(llava, stc.STCConfig(cacher=False, keep_ratio=0.5))
    out = greedy(llava, pixels, ids, n=3)
    pruned = state_of(llava).call.keep_mask[0]
    # Manual: prefill the kept sequence with original positions, then decode at L, L+1, ...
    kwargs = llava._stc_adapter.prune_inputs(llava, state_of(llava), {"input_ids": ids, "pixel_values_videos": pixels})
    assert torch.equal(state_of(llava).call.keep_mask[0], pruned)
    with torch.no_grad():
        step = llava.__class__.forward(llava, **kwargs, use_cache=True)
        cache, tokens, pos = getattr(step, CACHE_ARGUMENT), [], ids.shape[1]
        for _ in range(3):
            token = step.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
            step = llava.__class__.forward(
                llava, input_ids=token, **{CACHE_ARGUMENT: cache}, position_ids=torch.tensor([[pos]]), use_cache=True
            )
            pos += 1
    assert out[0, ids.shape[1] :].tolist() == torch.cat(tokens, 1)[0].tolist()


def test_left_padded_batch_generates_like_single_rows(llava):
    pixels, ids = llava_video_inputs(frames=2, batch=2, seed=4)
    stc.patch(llava, stc.STCConfig(cache_interval=2, keep_ratio=0.5))
    rows = [ids[0], torch.cat([torch.tensor([5, 6]), ids[1]])]  # row 0 gets left-padded by 2
    padded = torch.stack([torch.cat([torch.zeros(2, dtype=torch.long), rows[0]]), rows[1]])
    mask = torch.ones_like(padded)
    mask[0, :2] = 0
    batch = llava.generate(
        input_ids=padded, attention_mask=mask, pixel_values_videos=pixels, max_new_tokens=3, do_sample=False
    )
    for b, row in enumerate(rows):
        single = llava.generate(
            input_ids=row[None], pixel_values_videos=pixels[b : b + 1], max_new_tokens=3, do_sample=False
        )
        assert batch[b, -3:].tolist() == single[0, -3:].tolist()


def test_generate_signatures_survive_patching(llava):
    before = inspect.signature(llava.model.get_video_features)
    stc.patch(llava)
    assert inspect.signature(llava.model.get_video_features) == before
    assert "pixel_values_videos" in inspect.signature(llava.forward).parameters
    pixels, ids = llava_video_inputs(frames=2)
    stc.patch(llava, stc.STCConfig(pruner=False))
    greedy(llava, pixels, ids, n=2)  # generate routes kwargs through the wrapped signatures
    assert stc.stats(llava)["frames"] == 2


def test_images_pass_through_untouched(llava):
    ids = torch.tensor([[1] + [IMAGE_TOKEN] * 36 + [5, 6]])
    image = torch.randn(1, 2, 3, 28, 28, dtype=torch.float64)
    sizes = torch.tensor([[28, 28]])
    with torch.no_grad():
        ref = llava(input_ids=ids, pixel_values=image, image_sizes=sizes).logits
        stc.patch(llava, stc.STCConfig(cache_interval=2, update_ratio=0.1, keep_ratio=0.1))
        got = llava(input_ids=ids, pixel_values=image, image_sizes=sizes).logits
    assert torch.equal(got, ref)
    assert stc.stats(llava)["frames"] == 0


def test_wrong_placeholder_count_is_a_clear_error(llava):
    pixels, ids = llava_video_inputs(frames=3)
    stc.patch(llava, stc.STCConfig(keep_ratio=0.5))
    with pytest.raises(ValueError, match="video tokens"):
        greedy(llava, pixels, torch.cat([ids[:, :3], ids[:, 4:]], dim=1))  # one placeholder missing


def test_unsupported_model_lists_supported_families():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(stc.UnsupportedModelError, match="LLaVA-OneVision"):
        stc.patch(llm)
    with pytest.raises(stc.UnsupportedModelError, match="Supported families"):
        stc.patch(torch.nn.Linear(2, 2))


def test_api_errors_on_unpatched_model(llava):
    with pytest.raises(ValueError, match="not patched"):
        stc.stats(llava)
    with pytest.raises(TypeError, match="STCConfig"):
        stc.patch(llava, {"keep_ratio": 0.3})


def test_patched_context_restores_previous_state(llava):
    pixels, ids = llava_video_inputs(frames=2)
    ref = logits(llava, pixels, ids)
    with stc.patched(llava, stc.STCConfig(keep_ratio=0.5)):
        assert stc.is_patched(llava)
    assert not stc.is_patched(llava)
    assert torch.equal(logits(llava, pixels, ids), ref)
    stc.patch(llava, stc.STCConfig(keep_ratio=0.25))
    with stc.patched(llava, stc.STCConfig(keep_ratio=0.5)):
        assert stc.config_of(llava).keep_ratio == 0.5
    assert stc.config_of(llava).keep_ratio == 0.25
