"""Training with missing tokens: which tokens each pattern keeps, and how many."""

from __future__ import annotations

import numpy as np
import pytest

from stc.eval.testbed.token_drop import PATTERNS, TokenDrop, cell_change, keep_indices


def frames_with_a_change(count=3, size=32):
    frames = np.full((count, size, size, 3), 100, np.uint8)
    if count > 2:
        frames[2, :8, 8:16] = 200  # frame 2: cell (0, 1) of a 4x4 grid changes
    return frames


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_pattern_keeps_the_budget_in_each_frame_in_order(pattern):
    grid, count, kept = 4, 3, 5
    on_object = np.zeros(count * grid * grid, bool)
    indices = keep_indices(pattern, kept, grid, np.random.default_rng(0), frames_with_a_change(count), on_object).numpy()
    per_frame = [indices[(indices >= f * 16) & (indices < (f + 1) * 16)] for f in range(count)]
    assert [len(p) for p in per_frame] == [kept] * count
    assert (np.diff(indices) > 0).all()  # ascending: the frame's original token order


def test_objects_first_then_random_fill():
    on_object = np.zeros(2 * 16, bool)
    on_object[[3, 7, 16 + 0]] = True
    few = keep_indices("objects", 1, 4, np.random.default_rng(1), on_object=on_object).numpy()
    assert few[0] in (3, 7) and few[1] == 16
    many = set(keep_indices("objects", 6, 4, np.random.default_rng(1), on_object=on_object).tolist())
    assert {3, 7, 16} <= many and len(many) == 12


def test_change_keeps_the_cells_that_changed_and_blob_a_connected_region():
    frames = frames_with_a_change()
    assert cell_change(frames, 4)[2].argmax() == 1 and not cell_change(frames, 4)[:2].any()
    assert keep_indices("change", 1, 4, np.random.default_rng(0), frames)[2] == 2 * 16 + 1
    blob = keep_indices("blob", 9, 8, np.random.default_rng(3), frames_with_a_change(1, 32)).numpy()
    rows, cols = np.divmod(blob, 8)
    assert rows.max() - rows.min() <= 3 and cols.max() - cols.min() <= 3  # 9 cells around one centre


def test_token_drop_draws_dense_samples_and_ratios_in_range():
    drop = TokenDrop(np.random.default_rng(0), dense_share=0.25, min_keep=0.1)
    frames, on_object = frames_with_a_change(2, 32), np.zeros(2 * 64, bool)
    kept = [drop(8, frames, on_object) for _ in range(400)]
    dense = sum(k is None for k in kept)
    assert 60 < dense < 140  # about a quarter
    counts = [len(k) // 2 for k in kept if k is not None]
    assert min(counts) >= 6 and max(counts) <= 64 and len(set(counts)) > 30
    with pytest.raises(ValueError, match="unknown drop pattern"):
        keep_indices("stripes", 3, 4, np.random.default_rng(0), frames)
