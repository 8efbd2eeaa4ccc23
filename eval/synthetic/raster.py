"""Anti-aliased drawing of the synthetic benchmark's shapes and characters, in NumPy alone.

Why not OpenCV: its anti-aliasing and its text renderer change between releases (OpenCV 5 draws
`putText` with another font), so the same seed gave other frames on another install. Here every
pixel is decided by exact arithmetic: a pixel is split into SUBSAMPLES x SUBSAMPLES points at
binary-fraction offsets, each point is tested against the shape with elementwise float64 operations
(+, -, *, /, comparisons: correctly rounded on every platform, no transcendental functions), and
the pixel is blended by the integer count of points inside. The same inputs give the same bytes
with any NumPy or OpenCV release.

Characters are stroke glyphs drawn for this project in the style of a plain sans-serif stroke
font: polylines on a grid 21 units high (y grows downwards, 0 is the cap line, 21 the baseline),
drawn as round-capped strokes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SUBSAMPLES = 4  # per pixel and axis: 16 coverage levels
CAP_HEIGHT = 21  # glyph units from the cap line to the baseline

# Unit five-pointed star: outer radius 1, inner 0.45, first point up (clockwise, y down).
STAR = np.array(
    [
        (0.0, -1.0), (0.2645, -0.3641), (0.9511, -0.309), (0.428, 0.139), (0.5878, 0.809),
        (0.0, 0.45), (-0.5878, 0.809), (-0.428, 0.139), (-0.9511, -0.309), (-0.2645, -0.3641),
    ]
)

_P_BOWL = [(0, 0), (9, 0), (11.5, 0.8), (12.6, 2.2), (13, 5), (12.6, 7.8), (11.5, 9.2), (9, 10), (0, 10)]
# Each glyph: (ink width in units, polylines of (x, y) points).
GLYPH_STROKES: dict[str, tuple[float, tuple[tuple[tuple[float, float], ...], ...]]] = {
    "E": (12, (((0, 0), (0, 21)), ((0, 0), (12, 0)), ((0, 10), (8, 10)), ((0, 21), (12, 21)))),
    "F": (12, (((0, 0), (0, 21)), ((0, 0), (12, 0)), ((0, 10), (8, 10)))),
    "H": (14, (((0, 0), (0, 21)), ((14, 0), (14, 21)), ((0, 10), (14, 10)))),
    "K": (14, (((0, 0), (0, 21)), ((14, 0), (0, 14)), ((5, 9), (14, 21)))),
    "L": (11, (((0, 0), (0, 21), (11, 21)),)),
    "M": (16, (((0, 21), (0, 0), (8, 21), (16, 0), (16, 21)),)),
    "N": (14, (((0, 21), (0, 0), (14, 21), (14, 0)),)),
    "P": (13, (((0, 21), *_P_BOWL),)),
    "R": (14, (((0, 21), *_P_BOWL), ((7, 10), (14, 21)))),
    "T": (14, (((7, 0), (7, 21)), ((0, 0), (14, 0)))),
    "2": (14, (((1, 5), (1.4, 3.2), (2.6, 1.4), (4.6, 0.2), (7, 0), (9.6, 0.3), (11.6, 1.4), (12.8, 3.2),
                (13, 5.2), (12.4, 7.4), (10.6, 10), (0, 21), (14, 21)),)),
    "3": (14, (((2, 0), (13, 0), (7, 8), (9.6, 8), (12, 9), (13.4, 10.8), (14, 13.5), (13.6, 16.6),
                (12, 19.4), (9.4, 20.8), (6, 21), (3, 20.4), (1, 18.8), (0, 17)),)),
    "4": (15, (((10, 0), (0, 14), (15, 14)), ((10, 0), (10, 21)))),
    "5": (14, (((12, 0), (2, 0), (1, 9), (3.4, 7.6), (6.4, 7), (9.4, 7.4), (12, 8.8), (13.6, 11),
                (14, 14), (13.6, 16.8), (12, 19.4), (9.4, 20.8), (6, 21), (3, 20.4), (1, 18.8), (0, 17)),)),
    "7": (14, (((0, 0), (14, 0), (4, 21)),)),
    "8": (14, (((5, 0), (2.4, 0.8), (1.2, 2.6), (1.2, 5), (2.4, 6.8), (5, 8), (9, 9), (11.8, 10.4),
                (13.4, 12.2), (14, 14.6), (13.6, 17.6), (12.2, 19.8), (9.4, 21), (4.6, 21), (1.8, 19.8),
                (0.4, 17.6), (0, 14.6), (0.6, 12.2), (2.2, 10.4), (5, 9), (9, 8), (11.6, 6.8), (12.8, 5),
                (12.8, 2.6), (11.6, 0.8), (9, 0), (5, 0)),)),
}

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x, y) [h, w] -> bool [h, w]


def fill(image: np.ndarray, colour: tuple[int, int, int], box: tuple[float, float, float, float], inside: Mask) -> None:
    """Blend `colour` into `image` [H, W, 3] uint8 in place, weighted by the share of each pixel's
    subsample points for which `inside(x, y)` holds. Pixel (i, j) is the square of side 1 centred
    at x = j, y = i; `box` (x0, y0, x1, y1) bounds the shape in pixel coordinates."""
    height, width = image.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(width - 1, int(np.ceil(box[2]))), min(height - 1, int(np.ceil(box[3])))
    if x1 < x0 or y1 < y0:
        return
    s = SUBSAMPLES
    offsets = (np.arange(s) + 0.5) / s - 0.5
    xs = (np.arange(x0, x1 + 1)[:, None] + offsets).reshape(-1)
    ys = (np.arange(y0, y1 + 1)[:, None] + offsets).reshape(-1)
    x, y = np.meshgrid(xs, ys)
    covered = inside(x, y).reshape(y1 - y0 + 1, s, x1 - x0 + 1, s).sum(axis=(1, 3), dtype=np.int64)[..., None]
    region = image[y0 : y1 + 1, x0 : x1 + 1].astype(np.int64)
    full = s * s
    blended = (region * (full - covered) + np.asarray(colour, np.int64) * covered + full // 2) // full
    image[y0 : y1 + 1, x0 : x1 + 1] = blended.astype(np.uint8)


def disc(cx: float, cy: float, radius: float) -> Mask:
    return lambda x, y: (x - cx) * (x - cx) + (y - cy) * (y - cy) <= radius * radius


def annulus(cx: float, cy: float, inner: float, outer: float) -> Mask:
    def inside(x, y):
        d2 = (x - cx) * (x - cx) + (y - cy) * (y - cy)
        return (d2 >= inner * inner) & (d2 <= outer * outer)

    return inside


def rectangle(x0: float, y0: float, x1: float, y1: float) -> Mask:
    return lambda x, y: (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def polygon(corners: np.ndarray) -> Mask:
    """Even-odd rule over the closed polygon `corners` [n, 2] (x, y)."""
    corners = np.asarray(corners, np.float64)

    def inside(x, y):
        result = np.zeros(x.shape, bool)
        for (ax, ay), (bx, by) in zip(corners, np.roll(corners, -1, axis=0)):
            if ay == by:
                continue
            spans = (ay > y) != (by > y)
            crossing = ax + (y - ay) * ((bx - ax) / (by - ay))
            result ^= spans & (x < crossing)
        return result

    return inside


def strokes(polylines: list[np.ndarray], half_width: float) -> Mask:
    """Points within `half_width` of any segment of the polylines (round caps and joins)."""
    limit = half_width * half_width

    def inside(x, y):
        result = np.zeros(x.shape, bool)
        for line in polylines:
            for (ax, ay), (bx, by) in zip(line[:-1], line[1:]):
                dx, dy = bx - ax, by - ay
                length2 = dx * dx + dy * dy
                t = np.zeros(x.shape) if length2 == 0 else np.clip(((x - ax) * dx + (y - ay) * dy) / length2, 0.0, 1.0)
                ex, ey = x - (ax + t * dx), y - (ay + t * dy)
                result |= ex * ex + ey * ey <= limit
        return result

    return inside


def draw_glyph(image: np.ndarray, char: str, cx: int, cy: int, size: int, colour: tuple[int, int, int]) -> None:
    """Draw `char` with its ink (strokes included) about `size` px high, centred at (cx, cy)."""
    if char not in GLYPH_STROKES:
        raise ValueError(f"no glyph for {char!r}; drawable: {''.join(GLYPH_STROKES)}")
    thickness = max(2, round(size / 7))
    scale = (size - thickness) / CAP_HEIGHT
    ink_width, lines = GLYPH_STROKES[char]
    left, top = cx - ink_width * scale / 2, cy - CAP_HEIGHT * scale / 2
    polylines = [np.asarray(line, np.float64) * scale + (left, top) for line in lines]
    half = thickness / 2
    box = (left - half, top - half, left + ink_width * scale + half, top + CAP_HEIGHT * scale + half)
    fill(image, colour, box, strokes(polylines, half))
