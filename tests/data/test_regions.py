"""Box -> visual-token masks against a brute-force overlap test, and placement in padded rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sif_jax.data.regions import (
    batch_region_mask,
    box_to_cell_range,
    image_region_mask,
    place_in_sequence,
    region_cell_mask,
)
from sif_jax.model.config import TINY_IMAGE_TOKEN_ID, TINY_PAD_TOKEN_ID, tiny

CELL = tiny().vision.cell_size  # 28


def brute_force(box_px, rows, cols, s):
    """Cell (r, c) is in iff [c*s, (c+1)*s) x [r*s, (r+1)*s) meets the box with positive area."""
    x1, y1, x2, y2 = box_px
    out = np.zeros((rows, cols), bool)
    for r in range(rows):
        for c in range(cols):
            ix = min(x2, (c + 1) * s) - max(x1, c * s)
            iy = min(y2, (r + 1) * s) - max(y1, r * s)
            out[r, c] = ix > 0 and iy > 0
    return out.reshape(-1)


def test_cell_size_comes_from_config():
    assert CELL == 28


def test_touching_a_border_does_not_pull_in_the_next_cell():
    # x2 = 56 = 2 cells exactly: columns 0 and 1 only.
    assert box_to_cell_range([0, 0, 56, 28], (4, 4), 28, normalized=False) == (0, 0, 0, 1)
    mask = region_cell_mask([[0, 0, 0.5, 0.25]], (4, 4), 28)  # 0.5 * 112 = 56
    assert np.flatnonzero(mask).tolist() == [0, 1]
    assert box_to_cell_range([28, 28, 28, 40], (4, 4), 28, normalized=False) is None  # no area


@settings(max_examples=300, deadline=None)
@given(
    rows=st.integers(1, 9), cols=st.integers(1, 9), s=st.sampled_from([CELL, 32, 14]),
    a=st.integers(0, 300), b=st.integers(0, 300), c=st.integers(0, 300), d=st.integers(0, 300),
    frac=st.booleans(),
)
def test_matches_brute_force(rows, cols, s, a, b, c, d, frac):
    w, h = cols * s, rows * s
    x1, x2 = sorted((a % (w + 1), b % (w + 1)))
    y1, y2 = sorted((c % (h + 1), d % (h + 1)))
    if frac:  # off-grid coordinates too
        x1, x2, y1, y2 = x1 * 0.97, x2 * 0.99, y1 * 0.98, y2 * 0.995
    want = brute_force((x1, y1, x2, y2), rows, cols, s)
    got_px = region_cell_mask([(x1, y1, x2, y2)], (rows, cols), s, normalized=False)
    got_norm = region_cell_mask([(x1 / w, y1 / h, x2 / w, y2 / h)], (rows, cols), s)
    np.testing.assert_array_equal(got_px, want)
    np.testing.assert_array_equal(got_norm, want)


def test_union_of_boxes_and_frames():
    m = image_region_mask([[0, 0, 0.25, 0.5], [0.75, 0.5, 1, 1]], (1, 8, 8), CELL, 2)
    assert np.flatnonzero(m).tolist() == [0, 4, 11, 15]
    video = image_region_mask([[0, 0, 0.25, 0.5]], (2, 8, 8), CELL, 2)
    assert np.flatnonzero(video).tolist() == [0, 4, 16, 20]
    with pytest.raises(ValueError, match="spatial_merge_size=2"):
        image_region_mask([[0, 0, 1, 1]], (1, 7, 8), CELL, 2)


def test_place_in_left_padded_rows():
    pad, img = TINY_PAD_TOKEN_ID, TINY_IMAGE_TOKEN_ID
    cells = region_cell_mask([[0.5, 0.5, 1, 1]], (2, 2), CELL)  # bottom-right cell: token 3
    body = [2, 3, img, img, img, img, 4, 50, 51]
    rows = np.array([[pad, pad, pad] + body, body + [pad, pad, pad]])
    attn = (rows != pad).astype(np.int32)
    out = batch_region_mask(rows, img, [[cells], [cells]], attn)
    assert np.flatnonzero(out[0]).tolist() == [3 + 2 + 3]  # shifted by the left padding
    assert np.flatnonzero(out[1]).tolist() == [2 + 3]
    # Two images in one row: masks are consumed in order.
    two = np.array([img, img, img, img, 9, img, img, img, img])
    full = np.ones(4, bool)
    got = place_in_sequence(two, img, [cells, full])
    assert np.flatnonzero(got).tolist() == [3, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="4 image-pad tokens"):
        place_in_sequence(rows[0], img, [np.ones(5, bool)], attn[0])
