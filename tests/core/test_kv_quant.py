"""Low-bit KV codes (stc.kv_quant) on hand-made tensors: packing, error bounds, byte counts."""

import pytest
import torch

from stc.kv_quant import kmeans, minmax_quantize, pack, quantize, unpack


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_round_trips_any_length(bits):
    codes = torch.randint(0, 1 << bits, (3, 7), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-21 * bits // 8)
    assert torch.equal(unpack(packed, bits, 21).view(3, 7), codes)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_minmax_error_is_at_most_half_a_step_of_its_group(bits):
    x = torch.randn(2, 3, 10) * torch.tensor([1.0, 10.0, 0.1]).view(1, 3, 1)
    codes = minmax_quantize(x, bits, group=4)  # groups of 4, 4, 2 (the last padded)
    y = codes.dequantize(torch.float32)
    assert y.shape == x.shape
    step = codes.scale.float().repeat_interleave(4, dim=-2).view(2, 3, 12)[..., :10]
    assert ((y - x).abs() <= step * 0.5 * 1.01 + 1e-3 * x.abs()).all()  # + float16 rounding of min and scale
    extremes = torch.tensor([x[0, 0, :4].min(), x[0, 0, :4].max()])
    assert torch.allclose(torch.stack([y[0, 0, :4].min(), y[0, 0, :4].max()]), extremes, rtol=2e-3, atol=1e-3)


def test_constant_groups_come_back_exactly():
    x = torch.full((1, 2, 8), 3.0)
    assert torch.equal(minmax_quantize(x, 2, group=8).dequantize(torch.float32), x)


def test_kivi_codes_keys_per_channel_and_values_per_token():
    """A key channel 100x larger than the others costs the others nothing (its own scales);
    the same outlier channel in values spreads its range over every token's group."""
    x = torch.randn(1, 64, 8)
    x[..., 3] *= 100
    keys_error = (quantize(x, 4, "keys").dequantize() - x)[..., [0, 1, 2, 4, 5, 6, 7]].abs().mean()
    values_error = (quantize(x, 4, "values").dequantize() - x)[..., [0, 1, 2, 4, 5, 6, 7]].abs().mean()
    assert keys_error * 10 < values_error


def test_qvg_codes_clustered_tokens_better_than_kivi_at_the_same_bits():
    centers = torch.randn(1, 4, 16) * 10
    x = centers[:, torch.arange(64) % 4] + 0.1 * torch.randn(1, 64, 16)
    kivi = (quantize(x, 2, "values", "kivi").dequantize() - x).norm()
    qvg = quantize(x, 2, "values", "qvg", clusters=4)
    assert (qvg.dequantize() - x).norm() * 10 < kivi
    assert qvg.shape == (1, 64, 16) and qvg.nbytes < x.numel() * 2


def test_kmeans_finds_separated_clusters():
    x = torch.cat([torch.zeros(1, 5, 2), torch.ones(1, 5, 2) * 10], dim=1)
    centroids, assignment = kmeans(x, 2)
    assert sorted(centroids[0, :, 0].tolist()) == [0.0, 10.0]
    assert assignment[0, :5].unique().numel() == 1 and assignment[0, 0] != assignment[0, 9]


@pytest.mark.parametrize("scheme", ["kivi", "qvg"])
def test_bytes_shrink_with_bits_and_dtype_is_kept(scheme):
    x = torch.randn(2, 60, 64, dtype=torch.bfloat16)
    sizes = [quantize(x, bits, "keys", scheme).nbytes for bits in (8, 4, 2)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < x.numel() * 2 / 4
    assert quantize(x, 2, "keys", scheme).dequantize().dtype == torch.bfloat16


@pytest.mark.parametrize("bad, message", [
    (dict(bits=3), "bits must be one of"),
    (dict(bits=16), "bits must be one of"),
    (dict(kind="queries"), "kind must be"),
    (dict(scheme="fp8"), "scheme must be"),
    (dict(x=torch.randn(2, 0, 4)), "n >= 1"),
    (dict(x=torch.randn(3, 4)), r"\[H, n, D\]"),
])
def test_bad_arguments_are_refused(bad, message):
    arguments = dict(x=torch.randn(2, 3, 4), bits=2, kind="keys", scheme="kivi") | bad
    with pytest.raises(ValueError, match=message):
        quantize(**arguments)
