"""Low-bit KV blocks: quantize a block's keys or values [H, n, D] to 8, 4 or 2 bits and back.

Two schemes (pure tensor code; the engine's block store applies them to blocks that left the
ingestion window):

- "kivi" (KIVI, Liu et al. 2024): asymmetric min-max codes; keys per channel (each channel's
  range taken over groups of `group` tokens: key outliers live in fixed channels), values per
  token (ranges over groups of `group` channels). One float16 scale and minimum per group.
- "qvg" (Quant VideoGen's semantic smoothing): per head, k-means over the block's tokens into a
  few centroids (float16), each token coded as its centroid plus a "kivi"-quantized residual. The
  residual's range is smaller than the raw tensor's, so its codes are finer; the centroids and
  the assignments cost bytes, which pays off on blocks with many tokens.

Every code stores its minimum and scale in float16 and the codes packed `8 // bits` to a byte, so
an element costs `bits` bits plus its group's 4 bytes shared by `group` elements. Reconstruction
error is at most half a quantization step of the element's group (plus float16 rounding of the
group's minimum and scale).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from stc.config import KV_BITS, KV_SCHEMES as SCHEMES


def pack(codes: Tensor, bits: int) -> Tensor:
    """uint8 codes < 2**bits, any shape, to a flat uint8 tensor holding 8 // bits codes a byte."""
    per = 8 // bits
    flat = codes.reshape(-1)
    pad = (-flat.numel()) % per
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    return (flat.view(-1, per) << shifts).sum(dim=1, dtype=torch.uint8)


def unpack(packed: Tensor, bits: int, count: int) -> Tensor:
    """The first `count` codes of `pack`'s output, flat uint8."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    return ((packed.view(-1, 1) >> shifts) & mask).reshape(-1)[:count]


@dataclass
class MinMaxCodes:
    """`bits`-bit codes of a tensor whose last axis was split into groups of `group` (the last
    group padded by repeating its final element, which changes no range)."""

    bits: int
    shape: tuple[int, ...]  # of the quantized tensor, its quantized axis last
    group: int
    packed: Tensor  # uint8
    minimum: Tensor  # float16 [..., groups, 1]
    scale: Tensor  # float16 [..., groups, 1]

    def dequantize(self, dtype: torch.dtype) -> Tensor:
        *lead, length = self.shape
        groups = self.minimum.shape[-2]
        codes = unpack(self.packed, self.bits, _numel(lead) * groups * self.group)
        codes = codes.view(*lead, groups, self.group).float()
        out = codes * self.scale.float() + self.minimum.float()
        return out.view(*lead, groups * self.group)[..., :length].to(dtype)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.minimum, self.scale))

    def to(self, device, non_blocking: bool = False) -> MinMaxCodes:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(self, packed=move(self.packed), minimum=move(self.minimum), scale=move(self.scale))


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def minmax_quantize(x: Tensor, bits: int, group: int) -> MinMaxCodes:
    """Asymmetric min-max codes of `x` over groups of `group` elements along its last axis."""
    *lead, length = x.shape
    group = min(group, length)
    groups = -(-length // group)
    data = x.float()
    if groups * group != length:  # pad the last group by repeating its final element
        data = data[..., torch.arange(groups * group, device=x.device).clamp(max=length - 1)]
    grouped = data.view(*lead, groups, group)
    minimum = grouped.amin(dim=-1, keepdim=True).half()
    levels = (1 << bits) - 1
    span = grouped.amax(dim=-1, keepdim=True) - minimum.float()
    scale = (span / levels).half()
    scale = torch.where(scale.float() > 0, scale, torch.ones_like(scale))  # a constant group: any step is exact
    codes = ((grouped - minimum.float()) / scale.float()).round().clamp(0, levels).to(torch.uint8)
    return MinMaxCodes(bits, tuple(x.shape), group, pack(codes, bits), minimum, scale)


@dataclass
class QuantizedTensor:
    """One quantized [H, n, D] key or value tensor of a block."""

    scheme: str
    kind: str  # "keys" (codes per channel) or "values" (codes per token)
    dtype: torch.dtype
    codes: MinMaxCodes  # of the tensor ("kivi") or of its residual to the centroids ("qvg")
    centroids: Tensor | None = None  # "qvg": float16 [H, C, D]
    assignment: MinMaxCodes | None = None  # "qvg": each token's centroid, [H, n] (exact codes)

    @property
    def bits(self) -> int:
        return self.codes.bits

    @property
    def shape(self) -> tuple[int, int, int]:
        shape = self.codes.shape
        return (shape[0], shape[2], shape[1]) if self.kind == "keys" else shape

    def dequantize(self) -> Tensor:
        x = self.codes.dequantize(torch.float32)
        if self.kind == "keys":
            x = x.transpose(1, 2)  # [H, D, n] -> [H, n, D]
        if self.centroids is not None:
            assignment = self.assignment.dequantize(torch.float32).round().long()  # [H, n]
            x = x + torch.gather(self.centroids.float(), 1, assignment[..., None].expand(-1, -1, x.shape[-1]))
        return x.to(self.dtype)

    @property
    def nbytes(self) -> int:
        extra = 0 if self.centroids is None else self.centroids.numel() * 2 + self.assignment.nbytes
        return self.codes.nbytes + extra

    def to(self, device, non_blocking: bool = False) -> QuantizedTensor:
        if self.centroids is None:
            return replace(self, codes=self.codes.to(device, non_blocking))
        return replace(self, codes=self.codes.to(device, non_blocking),
                       centroids=self.centroids.to(device, non_blocking=non_blocking),
                       assignment=self.assignment.to(device, non_blocking))


def kmeans(x: Tensor, clusters: int, iterations: int = 8) -> tuple[Tensor, Tensor]:
    """Per head k-means of tokens x [H, n, D] (float32): centroids [H, C, D] and each token's
    cluster [H, n]. Deterministic: starts from evenly spaced tokens; an emptied cluster keeps its
    previous centroid."""
    heads, count, dim = x.shape
    clusters = min(clusters, count)
    start = torch.linspace(0, count - 1, clusters, device=x.device).round().long()
    centroids = x[:, start].clone()
    for _ in range(iterations):
        assignment = torch.cdist(x, centroids).argmin(dim=-1)  # [H, n]
        sums = torch.zeros_like(centroids).scatter_add_(1, assignment[..., None].expand(-1, -1, dim), x)
        sizes = torch.zeros(heads, clusters, device=x.device).scatter_add_(1, assignment, torch.ones_like(x[..., 0]))
        centroids = torch.where(sizes[..., None] > 0, sums / sizes.clamp(min=1)[..., None], centroids)
    return centroids, torch.cdist(x, centroids).argmin(dim=-1)


def quantize(x: Tensor, bits: int, kind: str, scheme: str = "kivi", group: int = 64, clusters: int = 4) -> QuantizedTensor:
    """Quantize a block's keys or values x [H, n, D]. `kind` "keys" codes each channel over
    groups of `group` tokens, "values" each token over groups of `group` channels; `clusters`
    is the number of k-means centroids per head for "qvg"."""
    if bits not in KV_BITS[1:]:
        raise ValueError(f"bits must be one of {KV_BITS[1:]} to quantize, got {bits!r}")
    if kind not in ("keys", "values"):
        raise ValueError(f"kind must be 'keys' or 'values', got {kind!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if x.dim() != 3 or x.shape[1] == 0:
        raise ValueError(f"expected a block [H, n, D] with n >= 1, got shape {tuple(x.shape)}")
    data = x.float()
    centroids = assignment = None
    if scheme == "qvg":
        centroids, cluster = kmeans(data, clusters)
        centroids = centroids.half()
        data = data - torch.gather(centroids.float(), 1, cluster[..., None].expand(-1, -1, data.shape[-1]))
        width = max(1, (centroids.shape[1] - 1).bit_length())
        width = next(b for b in (2, 4, 8) if b >= width)
        assignment = _exact_assignment(cluster, width)
    if kind == "keys":
        data = data.transpose(1, 2)  # codes per channel: the quantized axis (tokens) last
    return QuantizedTensor(scheme, kind, x.dtype, minmax_quantize(data, bits, group), centroids, assignment)


def _exact_assignment(cluster: Tensor, bits: int) -> MinMaxCodes:
    """Cluster indices as codes with minimum 0 and step 1, so they come back exactly."""
    shape = tuple(cluster.shape)
    ones = torch.ones(*shape[:-1], 1, 1, dtype=torch.float16, device=cluster.device)
    return MinMaxCodes(bits, shape, shape[-1], pack(cluster.to(torch.uint8), bits), torch.zeros_like(ones), ones)
