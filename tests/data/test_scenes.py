"""Scenes: tight visible boxes, occlusion follows depth, perspective, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from sif_jax.data import scenes as scenes_mod
from sif_jax.data.scenes import SceneConfig, generate_scene


def _all(scenes, small_scenes):
    return list(scenes) + list(small_scenes)


def test_arrays_shapes_dtypes(scenes, small_scenes):
    for sc in _all(scenes, small_scenes):
        h, w = sc.config.height, sc.config.width
        assert sc.image.shape == (h, w, 3) and sc.image.dtype == np.uint8
        assert sc.depth.shape == (h, w) and sc.depth.dtype == np.float32
        assert sc.id_mask.shape == (h, w)
        assert sc.silhouettes.shape == (len(sc.objects), h, w)
        assert 0.0 <= sc.depth.min() and sc.depth.max() <= 1.0
        assert sc.depth.min() == 0.0  # normalised per image: the nearest pixel is 0
        assert sc.config.min_objects <= len(sc.objects) <= sc.config.max_objects


def test_object_counts_cover_range(scenes):
    counts = {len(sc.objects) for sc in scenes}
    assert min(counts) == 2 and max(counts) == 6


def test_deterministic_given_seed():
    a, b = generate_scene(11), generate_scene(11)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.depth, b.depth)
    assert a.objects == b.objects
    c = generate_scene(12)
    assert not np.array_equal(a.image, c.image)


def test_boxes_tightly_bound_visible_pixels(scenes, small_scenes):
    for sc in _all(scenes, small_scenes):
        h, w = sc.hw
        for o in sc.objects:
            rows, cols = np.nonzero(sc.id_mask == o.index)
            assert rows.size == o.visible_pixels >= sc.config.min_visible_pixels
            expected = [cols.min() / w, rows.min() / h, (cols.max() + 1) / w, (rows.max() + 1) / h]
            np.testing.assert_allclose(o.box, expected, atol=1e-12)
            assert all(0.0 <= v <= 1.0 for v in o.box)
            assert o.box[2] > o.box[0] and o.box[3] > o.box[1]


def test_box_depth_is_mean_of_depth_map_inside_box(scenes):
    for sc in scenes[:10]:
        h, w = sc.hw
        for o in sc.objects:
            x1, y1, x2, y2 = o.box
            patch = sc.depth[round(y1 * h): round(y2 * h), round(x1 * w): round(x2 * w)]
            assert o.depth == pytest.approx(float(patch.mean()), abs=1e-6)


def test_occluder_is_nearer_where_silhouettes_overlap(scenes, small_scenes):
    overlapping_pairs = 0
    for sc in _all(scenes, small_scenes):
        for a, b in itertools.combinations(sc.objects, 2):
            overlap = sc.silhouettes[a.index] & sc.silhouettes[b.index]
            if not overlap.any():
                continue
            overlapping_pairs += 1
            near, far = (a, b) if a.position[2] < b.position[2] else (b, a)
            seen = sc.id_mask[overlap]
            # The farther object is never the one seen where the two overlap...
            assert not np.any(seen == far.index)
            # ...and the depth map there is nearer than the farther object's own depth.
            assert np.all(sc.depth[overlap] < far.object_depth)
            assert near.object_depth < far.object_depth
    assert overlapping_pairs > 5  # the check above is not vacuous


def test_object_pixels_carry_object_depth(scenes):
    for sc in scenes[:10]:
        for o in sc.objects:
            vals = sc.depth[sc.id_mask == o.index]
            np.testing.assert_allclose(vals, o.object_depth, atol=1e-5)


def test_perspective_farther_is_higher_and_smaller(scenes):
    checked = 0
    for sc in scenes:
        h = sc.hw[0]
        for a, b in itertools.combinations(sc.objects, 2):
            rows_a = np.nonzero(sc.silhouettes[a.index].any(axis=1))[0]
            rows_b = np.nonzero(sc.silhouettes[b.index].any(axis=1))[0]
            if rows_a[-1] == h - 1 or rows_b[-1] == h - 1:
                continue  # cut by the frame
            near, far = (a, b) if a.position[2] < b.position[2] else (b, a)
            rn, rf = (rows_a, rows_b) if near is a else (rows_b, rows_a)
            if far.position[2] - near.position[2] > 0.2:
                assert rf[-1] <= rn[-1]  # the ground contact of the farther is higher
                checked += 1
            same_kind = (near.size, near.shape) == (far.size, far.shape)
            if same_kind and far.position[2] - near.position[2] > 0.5:
                assert far.total_pixels < near.total_pixels
    assert checked > 20


def test_ground_depth_grows_towards_horizon(scenes):
    sc = scenes[0]
    bg = sc.id_mask == -1
    d = np.where(bg, sc.depth.astype(np.float64), np.nan)
    step = d[:-1] - d[1:]  # row r minus row r+1: the upper pixel is farther (or equal)
    assert np.all(step[~np.isnan(step)] >= -1e-6)
    assert sc.depth[0, 0] == pytest.approx(1.0)  # sky is the far plane


def test_config_errors_name_field():
    with pytest.raises(ValueError, match="min_objects"):
        SceneConfig(min_objects=5, max_objects=3)
    with pytest.raises(ValueError, match="height"):
        SceneConfig(height=8)


def test_preview_cli_writes_contact_sheet(tmp_path):
    out = tmp_path / "preview.png"
    scenes_mod.main(["--preview", str(out), "--num", "2", "--size", "96"])
    with Image.open(out) as im:
        assert im.size == (3 * 96 * 2, 2 * 96 * 2)
