"""sif_jax.data.image against transformers' Qwen2-VL image processor (saved fixture, no torch)."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sif_jax.data.image import normalize, patchify, process_image, smart_resize
from sif_jax.model.config import get_preset

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "..", "fixtures", "qwen_image_processor")
FILES = sorted(glob.glob(os.path.join(FIXTURE_DIR, "*.npz")))


def test_fixture_present():
    assert len(FILES) >= 3, "run tests/data/make_image_processor_fixture.py in the torch venv"


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f)[:-4] for f in FILES])
@pytest.mark.parametrize("preset", ["tiny", "qwen2_5_vl_7b"])
def test_matches_hf_processor(path, preset):
    vision = get_preset(preset).vision
    with np.load(path) as data:
        d = dict(data)
    out = process_image(d["image"], vision, int(d["min_pixels"]), int(d["max_pixels"]))
    np.testing.assert_array_equal(out.image_grid_thw, d["pil_image_grid_thw"])
    assert out.pixel_values.shape == d["pil_pixel_values"].shape == (out.pixel_values.shape[0], vision.patch_dim)
    # Same PIL bicubic resize on uint8, same float32 arithmetic: equal to float32 rounding.
    np.testing.assert_allclose(out.pixel_values, d["pil_pixel_values"], rtol=0, atol=1e-6)
    if "tv_pixel_values" in d:  # torchvision's bicubic differs from PIL's (not in the stored fixture)
        np.testing.assert_array_equal(out.image_grid_thw, d["tv_image_grid_thw"])


def test_no_resize_case_is_exact():
    (path,) = [f for f in FILES if "exact" in f]
    with np.load(path) as d:
        out = process_image(d["image"], get_preset("tiny").vision, int(d["min_pixels"]), int(d["max_pixels"]))
        assert out.resized_hw == d["image"].shape[:2]
        np.testing.assert_allclose(out.pixel_values, d["pil_pixel_values"], rtol=0, atol=1e-6)


def test_patch_order_by_hand():
    """Patch k of the output is HF's merge-block order; each patch is (channel, frame, row, col)."""
    rng = np.random.default_rng(0)
    c, h, w, p, m, t = 3, 56, 84, 14, 2, 2
    img = rng.normal(size=(c, h, w)).astype(np.float32)
    pv, grid = patchify(img, p, m, t)
    gh, gw = h // p, w // p
    assert grid.tolist() == [[1, gh, gw]]
    k = 0
    for br in range(gh // m):
        for bc in range(gw // m):
            for ir in range(m):
                for ic in range(m):
                    r, cc = br * m + ir, bc * m + ic
                    patch = img[:, r * p:(r + 1) * p, cc * p:(cc + 1) * p]
                    want = np.stack([patch] * t, axis=1).reshape(-1)
                    np.testing.assert_array_equal(pv[k], want)
                    k += 1


def test_normalize_values():
    img = np.array([[[0, 128, 255]]], np.uint8)
    got = normalize(img)[:, 0, 0]
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    np.testing.assert_allclose(got, (np.array([0, 128, 255]) / 255 - mean) / std, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.integers(8, 3000), st.integers(8, 3000), st.sampled_from([28, 32]))
def test_smart_resize_invariants(h, w, factor):
    if max(h, w) / min(h, w) > 200:
        return
    lo, hi = 56 * 56, 28 * 28 * 1280
    rh, rw = smart_resize(h, w, factor, lo, hi)
    assert rh % factor == 0 and rw % factor == 0 and rh >= factor and rw >= factor
    assert rh * rw <= hi or min(rh, rw) == factor
    assert rh * rw >= lo


def test_smart_resize_examples():
    assert smart_resize(224, 224) == (224, 224)
    assert smart_resize(50, 73, 28, 56 * 56, 28 * 28 * 16) == (56, 84)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 3000)
