"""Peer methods (stc.peers): each rule against a hand computation on tiny tensors, causality,
budgets, config validation, and the methods on the tiny models (generate and engine)."""

import math

import pytest
import torch
import torch.nn.functional as F

import stc
from stc.api import state_of
from stc.config import STCConfig
from stc.integrations.engine.session import StreamingSession
from stc.methods import METHODS, PEERS, REFERENCES, method_config
from stc.peers import (
    FrameContext,
    MethodConfig,
    TokenMerging,
    attention_received,
    bipartite_soft_matching,
    chunk_budgets,
    ground_truth,
    merge_to_budget,
    merge_weighted,
    pixel_cells,
    uniform_positions,
)
from stc.pruner import GAUSSIAN_BANDWIDTHS
from tests.tiny import (
    llava_video_inputs,
    qwen_video_inputs,
    random_frames,
    tiny_qwen,
    tiny_qwen_processor,
)

QWEN_PEERS = ["vidcom2", "dycoke", "timechat", "evs", "uniform", "random"]
QUESTION = "what is in the video ?"


def selector(method, keep_ratio=0.5, stream=0, **options):
    return MethodConfig(method, keep_ratio=keep_ratio, options=options).make_selector(stream)


def cosine(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def k_lowest(values, k):
    return sorted(sorted(range(len(values)), key=lambda i: values[i])[:k])


def k_highest(values, k):
    return sorted(sorted(range(len(values)), key=lambda i: -values[i])[:k])


def frames_and_context(frames=6, n=10, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(frames, n, dim, generator=g, dtype=torch.float64)
    context = FrameContext(pixels=torch.randn(frames, n, 12, generator=g, dtype=torch.float64),
                           attention=torch.rand(frames, n, generator=g, dtype=torch.float64))
    return tokens, context


def positions(selection):
    return [p.tolist() for p in selection.positions]


# -- Rules against hand computations ----------------------------------------------------------


def test_uniform_spreads_k_positions_evenly():
    assert uniform_positions(10, 3).tolist() == [int((i + 0.5) * 10 / 3) for i in range(3)] == [1, 5, 8]
    tokens, _ = frames_and_context(frames=2)
    selection = selector("uniform", keep_ratio=0.3).select(tokens)
    assert positions(selection) == [[1, 5, 8]] * 2
    assert torch.equal(selection.tokens[1], tokens[1, [1, 5, 8]])


def test_random_is_seeded_per_stream_and_frame():
    tokens, _ = frames_and_context(frames=3)
    first = positions(selector("random", keep_ratio=0.3, seed=7, stream=1).select(tokens))
    again = positions(selector("random", keep_ratio=0.3, seed=7, stream=1).select(tokens))
    other_stream = positions(selector("random", keep_ratio=0.3, seed=7, stream=2).select(tokens))
    for t in range(3):
        g = torch.Generator().manual_seed(7 * 1_000_003 + 1 * 10_007 + t)
        assert first[t] == sorted(torch.randperm(10, generator=g)[:3].tolist())
    assert first == again and first != other_stream
    assert len({tuple(p) for p in first}) > 1  # frames differ


def object_masks(frames=4, n=16, seed=1):
    """Per frame, a different set of cells on objects (frame 0: none, frame f: 2 + 2f cells)."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(frames, n, dtype=torch.bool)
    for f in range(1, frames):
        masks[f, torch.randperm(n, generator=g)[: 2 + 2 * f]] = True
    return masks


@pytest.mark.parametrize("keep_ratio", [0.1, 0.25, 0.5, 0.75])
def test_oracle_keeps_object_cells_first_then_fills_the_budget_at_random(keep_ratio):
    tokens = torch.randn(4, 16, 8, dtype=torch.float64)
    masks = object_masks()
    asked = []

    def cells(stream, t, n):
        asked.append((stream, t, n))
        return masks[t]

    with ground_truth(cells):
        selection = selector("oracle", keep_ratio=keep_ratio, seed=3, stream=1).select(tokens)
    random = positions(selector("random", keep_ratio=keep_ratio, seed=3, stream=1).select(tokens))
    budget = round(16 * keep_ratio)
    assert asked == [(1, t, 16) for t in range(4)]
    for t, kept in enumerate(positions(selection)):
        on_object = set(masks[t].nonzero().flatten().tolist())
        assert len(kept) == budget and kept == sorted(set(kept))  # the budget, exactly
        if budget <= len(on_object):
            assert set(kept) <= on_object  # only object cells
        else:
            assert on_object <= set(kept)  # every object cell, then the rest at random
        assert torch.equal(selection.tokens[t], tokens[t, kept])
    assert positions(selection)[0] == random[0]  # no object: what random keeps (same draw)
    fills = {tuple(kept) for kept in positions(selection)[1:]}
    with ground_truth(cells):
        again = positions(selector("oracle", keep_ratio=keep_ratio, seed=3, stream=1).select(tokens))
        other_seed = positions(selector("oracle", keep_ratio=keep_ratio, seed=4, stream=1).select(tokens))
    assert again == positions(selection)  # seeded
    if keep_ratio == 0.75:  # the random fill depends on the seed
        assert other_seed != again and len(fills) == 3


def test_oracle_needs_the_ground_truth_of_each_frame():
    tokens = torch.randn(2, 16, 8)
    with pytest.raises(ValueError, match="ground truth.*stc eval synthetic"):
        selector("oracle").select(tokens)
    with ground_truth(lambda stream, t, n: torch.ones(n - 1, dtype=torch.bool)):
        with pytest.raises(ValueError, match="marks \\(15,\\) cells for 16 tokens"):
            selector("oracle").select(tokens)
    with ground_truth(lambda stream, t, n: torch.zeros(n, dtype=torch.bool)):
        with ground_truth(lambda stream, t, n: torch.ones(n, dtype=torch.bool)):  # the innermost holds
            assert len(selector("oracle", keep_ratio=1.0).select(tokens).positions[0]) == 16
    with pytest.raises(ValueError, match="ground truth"):  # the hook ends with its block
        selector("oracle").select(tokens)


def test_timechat_budget_keeps_the_least_similar_to_the_previous_frame():
    tokens, _ = frames_and_context(frames=4)
    selection = selector("timechat", keep_ratio=0.3).select(tokens)
    assert positions(selection)[0] == [1, 5, 8]  # first frame: evenly spread
    for t in range(1, 4):
        similarity = [cosine(tokens[t, i], tokens[t - 1, i]) for i in range(10)]
        assert positions(selection)[t] == k_lowest(similarity, 3)
        assert torch.equal(selection.tokens[t], tokens[t, positions(selection)[t]])


def test_timechat_threshold_drops_tokens_above_it():
    tokens, _ = frames_and_context(frames=4)
    tokens[2] = tokens[1]  # a static frame: every similarity is 1
    selection = selector("timechat", threshold=0.2).select(tokens)
    assert positions(selection)[0] == list(range(10))  # first frame: everything
    for t in (1, 3):
        similarity = [cosine(tokens[t, i], tokens[t - 1, i]) for i in range(10)]
        assert positions(selection)[t] == [i for i in range(10) if similarity[i] <= 0.2]
    assert len(positions(selection)[2]) == 1  # a frame keeps at least one token


def test_evs_budget_keeps_the_most_changed_pixels():
    tokens, context = frames_and_context(frames=4)
    selection = selector("evs", keep_ratio=0.3).select(tokens, context)
    assert positions(selection)[0] == [1, 5, 8]
    for t in range(1, 4):
        change = [float((context.pixels[t, i] - context.pixels[t - 1, i]).abs().mean()) for i in range(10)]
        assert positions(selection)[t] == k_highest(change, 3)
    threshold = selector("evs", threshold=1.0).select(tokens, context)
    change = [float((context.pixels[1, i] - context.pixels[0, i]).abs().mean()) for i in range(10)]
    assert positions(threshold)[1] == [i for i in range(10) if change[i] > 1.0]
    with pytest.raises(ValueError, match="pixels"):
        selector("evs").select(tokens)


@pytest.mark.parametrize("pivot_full", [False, True])
def test_dycoke_compares_with_the_pivot_or_the_previous_frame(pivot_full):
    tokens, _ = frames_and_context(frames=8, n=6)
    selection = selector("dycoke", keep_ratio=0.5, pivot_full=pivot_full).select(tokens)
    reference = {1: 0, 2: 0, 3: 2, 4: 0, 5: 4, 6: 4, 7: 6}  # window 4; frame 4 is a pivot
    for t in range(8):
        if t % 4 == 0 and pivot_full:
            expected = list(range(6))
        elif t == 0:
            expected = [1, 3, 5]  # the stream's first frame, budget mode
        else:
            similarity = [cosine(tokens[t, i], tokens[reference[t], i]) for i in range(6)]
            expected = k_lowest(similarity, 3)
        assert positions(selection)[t] == expected, t


def gaussian(z, centre):
    return sum(math.exp(-float((z - centre).pow(2).sum()) / (2 * s2)) for s2 in GAUSSIAN_BANDWIDTHS)


def test_vidcom2_keeps_tokens_least_similar_to_running_video_and_frame_centres():
    tokens, _ = frames_and_context(frames=3, n=5, dim=4)
    selection = selector("vidcom2", keep_ratio=0.4).select(tokens)
    variance = [float(tokens[0, :, c].var(unbiased=False)) for c in range(4)]
    channels = k_lowest(variance, 2)
    z = F.normalize(tokens[:, :, channels], dim=-1)
    centres = [z[f].mean(0) for f in range(3)]
    for f in range(3):
        video = sum(centres[: f + 1]) / (f + 1)
        scores = [gaussian(z[f, i], video) + gaussian(z[f, i], centres[f]) for i in range(5)]
        assert positions(selection)[f] == k_lowest(scores, 2)


def test_vidcom2_chunk_allocation_gives_unique_frames_more_tokens():
    uniqueness = torch.tensor([-3.0, -2.99, -2.5])
    budgets = chunk_budgets(uniqueness, keep_ratio=0.3, tokens=100, temperature=0.01)
    exps = [math.exp((u - max(uniqueness.tolist())) / 0.01) for u in uniqueness.tolist()]
    probs = [e / sum(exps) for e in exps]
    expected = [max(1, round(min(1.0, 0.3 * (1 + p - sum(probs) / 3)) * 100)) for p in probs]
    assert budgets == expected and budgets[2] > budgets[0]
    tokens, _ = frames_and_context(frames=4)
    chunk = selector("vidcom2", keep_ratio=0.3, allocation="chunk").select(tokens)
    assert len({len(p) for p in chunk.positions}) > 1


def test_visionzip_keeps_dominant_and_merges_contextual_tokens():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(1, 8, 3, generator=g, dtype=torch.float64)
    attention = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2, 0.05, 0.4, 0.15]], dtype=torch.float64)
    selection = selector("visionzip", keep_ratio=0.5, contextual_share=0.5).select(tokens, FrameContext(attention=attention))
    dominant = [1, 3]  # k = 4: 2 dominant (most attended) + 2 contextual
    rest = [0, 2, 4, 5, 6, 7]
    targets = [rest[0], rest[3]]  # every (6 // 2)-th remaining token
    groups = {t: [t] for t in targets}
    for i in rest:
        if i not in targets:
            best = max(targets, key=lambda t: cosine(tokens[0, i], tokens[0, t]))
            groups[best].append(i)
    expected = {i: tokens[0, i] for i in dominant}
    expected.update({t: tokens[0, members].mean(0) for t, members in groups.items()})
    assert positions(selection) == [sorted(expected)]
    torch.testing.assert_close(selection.tokens[0], torch.stack([expected[i] for i in sorted(expected)]))


def test_bipartite_soft_matching_merges_the_most_similar_pairs():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 6, 3, generator=g, dtype=torch.float64)
    size = torch.tensor([[[1.0], [2.0], [1.0], [1.0], [3.0], [1.0]]], dtype=torch.float64)
    assignment, survivors = bipartite_soft_matching(x, 2)
    best = {a: max((1, 3, 5), key=lambda b: cosine(x[0, a], x[0, b])) for a in (0, 2, 4)}
    merged = sorted((0, 2, 4), key=lambda a: -cosine(x[0, a], x[0, best[a]]))[:2]
    kept = [i for i in range(6) if i not in merged]
    assert survivors[0].nonzero().flatten().tolist() == kept
    out, sizes = merge_weighted(x, size.float(), assignment, len(kept))
    for new, i in enumerate(kept):
        members = [i] + [a for a in merged if best[a] == i]
        weights = size[0, members, 0]
        expected = (x[0, members] * weights[:, None]).sum(0) / weights.sum()
        torch.testing.assert_close(out[0, new], expected)
        assert float(sizes[0, new]) == float(weights.sum())


def test_merge_to_budget_merges_in_rounds_down_to_the_budget():
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(4, 3, generator=g, dtype=torch.float64)
    kept, merged = merge_to_budget(tokens, 2)  # one round, r = 2: both A tokens join their B token
    assert kept.tolist() == [1, 3]
    for j, b in enumerate((1, 3)):
        members = [b] + [a for a in (0, 2) if max((1, 3), key=lambda c: cosine(tokens[a], tokens[c])) == b]
        torch.testing.assert_close(merged[j], tokens[members].mean(0))
    kept, merged = merge_to_budget(torch.randn(7, 3, generator=g, dtype=torch.float64), 2)  # 7 -> 4 -> 2
    assert len(kept) == 2 and kept.tolist() == sorted(kept.tolist()) and merged.shape == (2, 3)


def test_token_merging_biases_attention_by_size_and_unmerges_to_every_position():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 4, 3, generator=g, dtype=torch.float64)
    merging = TokenMerging(r=1, layers=2, tokens=4)
    assert torch.equal(merging.attention_bias(x), torch.zeros(1, 1, 1, 4, dtype=torch.float64))
    merged = merging.merge(x, x)
    assert merged.shape == (1, 3, 3)
    bias = merging.attention_bias(merged)
    assert sorted(bias.flatten().tolist()) == pytest.approx([0.0, 0.0, math.log(2)])
    full = merging.unmerge(merged)
    assert full.shape == (1, 4, 3)
    source = merging.source[0].tolist()
    for i in range(4):
        assert torch.equal(full[0, i], merged[0, source[i]])
    assert merging.mean_tokens == 3.5
    assert TokenMerging(r=None, layers=26, tokens=729).r == 729 // 52


def test_attention_received_is_the_mean_over_heads_and_queries():
    g = torch.Generator().manual_seed(7)
    q, k = torch.randn(1, 3, 4, generator=g, dtype=torch.float64), torch.randn(1, 3, 4, generator=g, dtype=torch.float64)
    got = attention_received(q, k, heads=2, scale=0.5)
    for j in range(3):
        total = 0.0
        for h in range(2):
            for i in range(3):
                logits = [0.5 * float(q[0, i, 2 * h : 2 * h + 2] @ k[0, m, 2 * h : 2 * h + 2]) for m in range(3)]
                total += math.exp(logits[j]) / sum(math.exp(v) for v in logits)
        assert float(got[0, j]) == pytest.approx(total / 6)


def test_pixel_cells_are_each_tokens_image_area():
    frames = torch.arange(16.0).view(1, 1, 4, 4)
    cells = pixel_cells(frames, (2, 2), cell=2)
    for r in range(2):
        for c in range(2):
            assert cells[0, 2 * r + c].tolist() == frames[0, 0, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].flatten().tolist()


# -- Properties shared by all methods ---------------------------------------------------------


@pytest.mark.parametrize("method", list(PEERS))
def test_selection_is_causal_and_keeps_the_budget(method):
    tokens, context = frames_and_context(frames=6)
    at_once = selector(method, keep_ratio=0.3).select(tokens, context)
    one_by_one = selector(method, keep_ratio=0.3)
    for f in range(6):
        step = one_by_one.select(tokens[f : f + 1], FrameContext(context.pixels[f : f + 1], context.attention[f : f + 1]))
        assert step.positions[0].tolist() == at_once.positions[f].tolist()
        torch.testing.assert_close(step.tokens[0], at_once.tokens[f])
    assert [len(p) for p in at_once.positions] == [3] * 6  # k = round(10 * 0.3)
    for kept, out in zip(at_once.positions, at_once.tokens):
        assert kept.tolist() == sorted(set(kept.tolist())) and out.shape == (3, 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "tomato"}, "MethodConfig.method.*tomato.*visionzip"),
        ({"method": "evs", "keep_ratio": 0}, "MethodConfig.keep_ratio"),
        ({"method": "evs", "keep_ratio": 1.5}, "MethodConfig.keep_ratio"),
        ({"method": "evs", "keep_ratio": float("nan")}, "MethodConfig.keep_ratio"),
        ({"method": "evs", "keep_ratio": 10**400}, "MethodConfig.keep_ratio"),  # no OverflowError from a NaN test
        ({"method": "evs", "options": {"threshold": float("nan")}}, r"options\['threshold'\]"),
        ({"method": "evs", "options": {"treshold": 1}}, "unknown option 'treshold'.*threshold"),
        ({"method": "uniform", "options": {"seed": 1}}, "unknown option 'seed'.*none"),
        ({"method": "timechat", "options": {"threshold": 2.0}}, r"options\['threshold'\].*\[-1, 1\]"),
        ({"method": "dycoke", "options": {"window": 1}}, r"options\['window'\]"),
        ({"method": "vidcom2", "options": {"allocation": "video"}}, r"options\['allocation'\]"),
        ({"method": "random", "options": {"seed": True}}, r"options\['seed'\]"),
        ({"method": "tome", "options": [("r", 2)]}, "MethodConfig.options must be a mapping"),
    ],
)
def test_method_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MethodConfig(**kwargs)


def test_method_names_select_configs():
    config = method_config("visionzip", STCConfig(keep_ratio=0.25))
    assert config == MethodConfig("visionzip", keep_ratio=0.25)
    assert config.options == {"contextual_share": 10 / 64}  # defaults filled in
    assert method_config("dense") is None and isinstance(method_config("stc-pruner"), STCConfig)
    assert set(METHODS) == {"dense", "stc", "stc-cacher", "stc-pruner", *PEERS}
    assert set(REFERENCES) == {"oracle"} and not set(REFERENCES) & set(METHODS)
    with pytest.raises(ValueError, match="unknown method 'tomato'.*evs"):
        method_config("tomato")
    assert config.replace(keep_ratio=0.5).keep_ratio == 0.5


def test_cli_method_option_takes_peer_names():
    from stc.cli import build_parser, stc_config_from_args

    args = build_parser().parse_args(["bench", "--method", "timechat", "--keep-ratio", "0.2"])
    assert stc_config_from_args(args) == MethodConfig("timechat", keep_ratio=0.2)
    args = build_parser().parse_args(["eval", "synthetic", "--method", "oracle", "--keep-ratio", "0.2"])
    assert stc_config_from_args(args) == MethodConfig("oracle", keep_ratio=0.2)


ORACLE_REFUSED = "method oracle needs the scene's ground truth (the cells objects cover): only `stc eval synthetic` has it"


@pytest.mark.parametrize("command", [
    ["run", "--method", "oracle"],
    ["demo", "--method", "oracle", "--headless"],
    ["bench", "--method", "oracle"],
    ["bench", "--methods", "dense,oracle", "--model", "llava-ov-tiny"],
    ["eval", "ovo-bench", "run", "--model", "m", "--anno", "a.json", "--video-root", "v", "--out", "o", "--method", "oracle"],
    ["eval", "streamingbench", "run", "--model", "m", "--anno", "a.json", "--video-root", "v", "--out", "o",
     "--method", "oracle"],
])
def test_the_oracle_is_refused_outside_the_synthetic_benchmark(command, capsys, tmp_path, monkeypatch):
    from stc.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith(ORACLE_REFUSED)
    assert not any(tmp_path.iterdir())  # refused before anything was written
    with pytest.raises(ValueError, match="only `stc eval synthetic`"):
        method_config("oracle")


# -- On the tiny models -----------------------------------------------------------------------


def llava_logits(model, pixels, ids):
    with torch.no_grad():
        return model(input_ids=ids, pixel_values_videos=pixels).logits


def test_patch_generate_and_unpatch_restore_exactly(llava):
    pixels, ids = llava_video_inputs(frames=4, batch=2, smooth=True)
    reference = llava_logits(llava, pixels, ids)
    hooks = lambda: {name: list(m._forward_hooks.values()) for name, m in llava.named_modules()}
    before = hooks()
    for method in PEERS:
        stc.patch(llava, MethodConfig(method, keep_ratio=0.5))
        out = llava.generate(input_ids=ids, pixel_values_videos=pixels, max_new_tokens=2, do_sample=False)
        assert out.shape == (2, ids.shape[1] + 2) and torch.equal(out[:, : ids.shape[1]], ids)
        assert stc.stats(llava)["llm_tokens_kept"] == 2 * 4 * 2, method  # 2 rows x 4 frames x 2 of 4 tokens
        assert int(state_of(llava).call.keep_mask.sum()) == 2 * (ids.shape[1] - 4 * 2)
    stc.unpatch(llava)
    assert torch.equal(llava_logits(llava, pixels, ids), reference)
    assert hooks() == before
    for module in llava.modules():
        assert "forward" not in module.__dict__
    assert "generate" not in llava.__dict__ and "get_video_features" not in llava.model.__dict__


def test_tome_without_merging_is_the_dense_model(llava):
    pixels, ids = llava_video_inputs(frames=3, smooth=True)
    reference = llava_logits(llava, pixels, ids)
    with stc.patched(llava, MethodConfig("tome", keep_ratio=1.0, options={"r": 0})):
        torch.testing.assert_close(llava_logits(llava, pixels, ids), reference, rtol=1e-9, atol=1e-9)


def test_tome_merges_inside_siglip_and_returns_the_full_grid(llava):
    pixels, _ = llava_video_inputs(frames=3, smooth=True)
    with torch.no_grad():
        dense = llava.model.get_video_features(pixels, return_dict=True).pooler_output
        with stc.patched(llava, MethodConfig("tome", options={"r": 4})):
            merged = llava.model.get_video_features(pixels, return_dict=True).pooler_output
            stats = stc.stats(llava)
    assert merged.shape == dense.shape and not torch.allclose(merged, dense)
    assert stats["vit_tokens"] == 3 * 16 and stats["vit_tokens_recomputed"] == 3 * (16 + 12) // 2  # 16 -> 12 -> 8


def test_visionzip_reads_the_attention_received_in_the_last_siglip_layer(llava):
    pixels, _ = llava_video_inputs(frames=2)
    inputs = {}
    attn = llava.model.vision_tower.encoder.layers[-1].self_attn
    hook = attn.register_forward_pre_hook(lambda m, args, kwargs: inputs.update(h=kwargs["hidden_states"]), with_kwargs=True)
    with torch.no_grad(), stc.patched(llava, MethodConfig("visionzip")):
        llava.model.get_video_features(pixels, return_dict=True)
        got = state_of(llava).call.vit_attention
    hook.remove()
    h = inputs["h"]
    q, k = attn.q_proj(h), attn.k_proj(h)
    heads, d = attn.num_heads, attn.head_dim
    for row in range(2):
        logits = torch.stack([q[row, :, i * d : (i + 1) * d] @ k[row, :, i * d : (i + 1) * d].T * attn.scale for i in range(heads)])
        expected = torch.softmax(logits, dim=-1).mean(dim=(0, 1))
        torch.testing.assert_close(got[row].double(), expected, rtol=1e-5, atol=1e-6)


def test_threshold_modes_vary_counts_and_uneven_batches_are_a_clear_error(llava):
    pixels, ids = llava_video_inputs(frames=3, batch=2)
    pixels[0, 1:] = pixels[0, :1]  # video 0 is static: EVS keeps 1 token of its later frames
    with stc.patched(llava, MethodConfig("evs", options={"threshold": 0.01})):
        with pytest.raises(ValueError, match="different numbers of video tokens"):
            llava.generate(input_ids=ids, pixel_values_videos=pixels, max_new_tokens=1)
        out = llava.generate(input_ids=ids[:1], pixel_values_videos=pixels[:1], max_new_tokens=1)
        assert stc.stats(llava)["llm_tokens_kept"] == 4 + 1 + 1  # first frame whole, then one token each
    assert out.shape[1] == ids.shape[1] + 1


@pytest.mark.parametrize("method", list(PEERS))
def test_engine_runs_each_peer_on_llava(llava, processor, method):
    config = MethodConfig(method, keep_ratio=0.5)
    with StreamingSession(llava, processor, config=config, max_new_tokens=2) as session:
        report = session.append_frames(random_frames(5, seed=1))
        answer = session.ask(QUESTION)
        assert (report.tokens_in, report.tokens_kept) == (20, 10)
        assert session.memory()["block_bytes_per_frame"] == 2 * 2 * 2 * 2 * 8 * 8  # 2 tokens per frame
        assert len(answer.token_ids) >= 1
    assert not stc.is_patched(llava)


def test_engine_takes_variable_counts(llava, processor):
    with StreamingSession(llava, processor, config=MethodConfig("timechat", options={"threshold": 0.9})) as session:
        report = session.append_frames(random_frames(6, seed=2))
        counts = [len(p) for p in state_of(llava).call.kept[0]]
        assert counts[0] == 4 and report.tokens_kept == sum(counts) and min(counts) >= 1
        assert session.ask(QUESTION, max_new_tokens=1).token_ids


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen("qwen2_5_vl")


@pytest.mark.parametrize("method", ["tome", "visionzip"])
def test_qwen_refuses_the_siglip_only_methods(qwen, method):
    with pytest.raises(ValueError, match=f"{method} is only available for LLaVA-OneVision"):
        stc.patch(qwen, MethodConfig(method))
    assert not stc.is_patched(qwen)


@pytest.mark.parametrize("method", QWEN_PEERS)
def test_qwen_generate_and_engine_with_each_peer(qwen, method):
    inputs = qwen_video_inputs(4, smooth=True)
    with stc.patched(qwen, MethodConfig(method, keep_ratio=0.5)):
        out = qwen.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 2
        assert stc.stats(qwen)["llm_tokens_kept"] == 2 * 4  # 2 slices x round(9 * 0.5)
    with StreamingSession(qwen, tiny_qwen_processor(), config=MethodConfig(method, keep_ratio=0.5), max_new_tokens=2) as session:
        report = session.append_frames(random_frames(6, size=24, seed=3))
        assert (report.tokens_in, report.tokens_kept) == (27, 12)
        assert session.ask(QUESTION).token_ids
