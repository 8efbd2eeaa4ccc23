"""STC-Cacher core on a hand-made pre-LN block (no transformers)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stc.cacher import (
    BlockOps,
    BlockReference,
    StreamCache,
    lowest_similarity,
    num_recomputed,
    plan_frames,
    run_block,
    selective_block,
    unit_keys,
)

WIDTH, HEADS, TOKENS = 16, 4, 10


class Block(nn.Module):
    """x + Attn(LN1 x); h + MLP(LN2 h) with separate q/k/v/out projections."""

    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.q, self.k, self.v, self.o = (nn.Linear(WIDTH, WIDTH) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 32), nn.GELU(), nn.Linear(32, WIDTH))

    def attend(self, q, k, v):
        f, nq, c = q.shape
        split = lambda t: t.view(f, t.shape[1], HEADS, c // HEADS).transpose(1, 2)
        o = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.o(o.transpose(1, 2).reshape(f, nq, c))

    def dense(self, x):
        h = self.ln1(x)
        k, v = self.k(h), self.v(h)
        a = self.attend(self.q(h), k, v)
        h2 = x + a
        m = self.mlp(self.ln2(h2))
        return h2 + m, BlockReference(k, v, a + m)

    def reference(self, x):
        """The cached reference of frames x, keys stored with unit norm (as run_block does)."""
        ref = self.dense(x)[1]
        ref.keys = unit_keys(ref.keys)
        return ref

    def ops(self):
        return BlockOps(
            dense=self.dense,
            norm1=self.ln1,
            key=self.k,
            query=self.q,
            value=self.v,
            attend=lambda q, k, v, i: self.attend(q, k, v),
            norm2=self.ln2,
            mlp=self.mlp,
        )


@pytest.fixture
def block():
    torch.manual_seed(0)
    return Block().double()


def frames(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, TOKENS, WIDTH, generator=g, dtype=torch.float64)
    return base + 0.2 * torch.randn(n, TOKENS, WIDTH, generator=g, dtype=torch.float64)


def test_num_recomputed_is_floor_with_floor_of_one():
    assert num_recomputed(729, 0.25) == 182
    assert num_recomputed(16, 0.25) == 4
    assert num_recomputed(3, 0.1) == 1
    assert num_recomputed(10, 1.0) == 10


def test_lowest_similarity_matches_brute_force():
    torch.manual_seed(1)
    keys, ref = torch.randn(3, 20, 8), torch.randn(3, 20, 8)
    index = lowest_similarity(keys, ref, 5)
    for f in range(3):
        sims = [F.cosine_similarity(keys[f, t], ref[f, t], dim=0).item() for t in range(20)]
        expected = sorted(sorted(range(20), key=lambda t: sims[t])[:5])
        assert index[f].tolist() == expected


def test_full_update_ratio_reproduces_the_dense_block(block):
    x_ref, x = frames(2)[:1], frames(2)[1:]
    ref = block.reference(x_ref)
    out, index = selective_block(x, ref, block.ops(), TOKENS)
    assert index.tolist() == [list(range(TOKENS))]
    torch.testing.assert_close(out, block.dense(x)[0], rtol=0, atol=1e-12)


def test_reused_rows_take_the_reference_branches_with_the_current_residual(block):
    x_ref, x = frames(2)[:1], frames(2)[1:]
    ref = block.reference(x_ref)
    out, index = selective_block(x, ref, block.ops(), 3)
    assert index.shape == (1, 3)
    reused = [t for t in range(TOKENS) if t not in index[0].tolist()]
    expected = x[0, reused] + ref.branches[0, reused]
    torch.testing.assert_close(out[0, reused], expected, rtol=0, atol=1e-12)
    # Recomputed rows: fresh query against fresh keys and V with reference rows elsewhere.
    h = block.ln1(x)
    k = block.k(h)
    v_mix = ref.values.clone()
    v_mix[0, index[0]] = block.v(h)[0, index[0]]
    a = block.attend(block.q(h), k, v_mix)
    h2 = x + a
    full = h2 + block.mlp(block.ln2(h2))
    torch.testing.assert_close(out[0, index[0]], full[0, index[0]], rtol=0, atol=1e-12)


def test_selected_tokens_are_the_least_similar_keys(block):
    x_ref, x = frames(2)[:1], frames(2, seed=3)[1:]
    ref = block.reference(x_ref)
    _, index = selective_block(x, ref, block.ops(), 4)
    sims = F.cosine_similarity(block.k(block.ln1(x)), block.dense(x_ref)[1].keys, dim=-1)[0]
    assert index[0].tolist() == sorted(torch.argsort(sims)[:4].tolist())


def test_plan_refreshes_every_n_frames_across_calls():
    stream = StreamCache()
    plan = plan_frames([stream], [5], interval=2, update_ratio=0.5, tokens=TOKENS, geometry=(1,))
    assert plan.ref_rows.tolist() == [0, 2, 4]
    assert plan.dyn_rows.tolist() == [1, 3]
    assert plan.dyn_source.tolist() == [0, 1]  # no carried reference: table = batch refs
    assert plan.runs == (0, 2)  # two runs of one frame, references = batch rows 0..1 (a view)
    stream.frames_seen, stream.geometry, stream.blocks[0] = 5, (1,), "carried"
    plan = plan_frames([stream], [3], interval=2, update_ratio=0.5, tokens=TOKENS, geometry=(1,))
    # frames 5, 6, 7 of the stream: 6 is a reference; 5 reuses the carried one (table row 0).
    assert plan.ref_rows.tolist() == [1]
    assert plan.dyn_rows.tolist() == [0, 2]
    assert plan.dyn_source.tolist() == [0, 1]
    assert plan.runs is None  # one run uses the carried reference, one a new one: gathered


def test_plan_without_reference_or_with_new_geometry_starts_with_a_reference():
    stream = StreamCache(frames_seen=3, geometry=(1,), blocks={0: "old"})
    plan = plan_frames([stream], [2], interval=5, update_ratio=0.5, tokens=TOKENS, geometry=(2,))
    assert plan.ref_rows.tolist() == [0]
    assert plan.dyn_rows.tolist() == [1]


def test_plan_keeps_streams_apart():
    a, b = StreamCache(), StreamCache()
    plan = plan_frames([a, b], [3, 3], interval=3, update_ratio=0.5, tokens=TOKENS, geometry=(1,))
    assert plan.ref_rows.tolist() == [0, 3]
    assert plan.dyn_rows.tolist() == [1, 2, 4, 5]
    assert plan.dyn_source.tolist() == [0, 0, 1, 1]
    assert plan.runs == (0, 2)  # two runs of two frames
    assert plan.last_ref == {0: 0, 1: 1}


def test_run_block_over_calls_equals_one_call(block):
    """Streaming a video in pieces gives the same block outputs as one batch."""
    x = frames(7, seed=5)
    whole = StreamCache()
    plan = plan_frames([whole], [7], 3, 0.3, TOKENS, (1,))
    out_whole, _ = run_block(0, x, plan, block.ops())
    pieces, outs, addresses = StreamCache(), [], []
    for chunk in (x[:2], x[2:3], x[3:7]):
        plan = plan_frames([pieces], [len(chunk)], 3, 0.3, TOKENS, (1,))
        outs.append(run_block(0, chunk, plan, block.ops())[0])
        pieces.frames_seen += len(chunk)
        pieces.geometry = (1,)
        addresses.append([t.data_ptr() for t in pieces.blocks[0].astuple()])
    torch.testing.assert_close(torch.cat(outs), out_whole, rtol=0, atol=1e-12)
    for held, expected in zip(pieces.blocks[0].astuple(), whole.blocks[0].astuple()):
        torch.testing.assert_close(held, expected, rtol=0, atol=1e-12)
    # frame 0's reference was stored by the first chunk; frame 6's was written into its buffers
    assert addresses[0] == addresses[1] == addresses[2]


def test_run_block_reference_rows_are_dense(block):
    x = frames(4, seed=2)
    plan = plan_frames([StreamCache()], [4], 2, 0.25, TOKENS, (1,))
    out, index = run_block(0, x, plan, block.ops())
    dense = block.dense(x)[0]
    torch.testing.assert_close(out[[0, 2]], dense[[0, 2]], rtol=0, atol=0)
    assert index.shape == (2, math.floor(0.25 * TOKENS))
    assert not torch.allclose(out[[1, 3]], dense[[1, 3]])


def test_references_made_in_inference_mode_are_replaced_outside_it(block):
    """A stream begun under inference mode and continued under no_grad: its inference-mode
    references cannot be written in place there, so they are replaced by fresh copies."""
    x = frames(4, seed=9)
    stream = StreamCache()
    for chunk, mode in ((x[:2], torch.inference_mode), (x[2:], torch.no_grad)):
        plan = plan_frames([stream], [len(chunk)], 2, 0.5, TOKENS, (1,))
        with mode():
            run_block(0, chunk, plan, block.ops())
        stream.frames_seen += len(chunk)
        stream.geometry = (1,)
    assert not stream.blocks[0].keys.is_inference()
    torch.testing.assert_close(stream.blocks[0].keys, block.reference(x[2:3]).keys, rtol=0, atol=1e-12)
