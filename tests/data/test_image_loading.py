"""`image.load_image` / `load_depth`: every decode path, against NumPy re-derivations of the expected pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sif_jax.data import image as im_mod
from sif_jax.data.image import load_depth, load_image, smart_resize, to_rgb_uint8


def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Independent oracle: c * a/255 + 255 * (1 - a/255), rounded half up, in float64."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.floor(rgb.astype(np.float64) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


RNG = np.random.default_rng(0)
RGBA = RNG.integers(0, 256, (6, 7, 4), dtype=np.uint8)
RGBA[0, 0] = (0, 0, 0, 0)  # fully transparent black: must come out white


def test_rgba_composited_on_white():
    got = load_image(_png(Image.fromarray(RGBA, "RGBA")))
    np.testing.assert_array_equal(got, _over_white(RGBA[..., :3], RGBA[..., 3]))
    assert got[0, 0].tolist() == [255, 255, 255]
    # qwen-vl-utils' to_rgb: paste on a white canvas with the alpha as mask (PIL rounding; within 1).
    canvas = Image.new("RGB", (7, 6), (255, 255, 255))
    canvas.paste(Image.fromarray(RGBA, "RGBA"), mask=Image.fromarray(RGBA[..., 3]))
    assert np.abs(got.astype(int) - np.asarray(canvas, int)).max() <= 1
    np.testing.assert_array_equal(to_rgb_uint8(RGBA), got)  # arrays take the same path


def test_palette_with_transparency_on_white():
    p = Image.new("P", (4, 3))
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    idx = np.array([[0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 1]], np.uint8)
    p.putdata(idx.ravel().tolist())
    got = load_image(_png(p, transparency=0))
    want = np.where(idx[..., None] == 0, 255, np.array([200, 100, 50], np.uint8)).astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    # without transparency: the palette colours
    got = load_image(_png(p))
    np.testing.assert_array_equal(got, np.where(idx[..., None] == 0, [10, 20, 30], [200, 100, 50]).astype(np.uint8))


def test_la_on_white():
    la = RNG.integers(0, 256, (5, 4, 2), dtype=np.uint8)
    got = load_image(_png(Image.fromarray(la, "LA")))
    np.testing.assert_array_equal(got, _over_white(np.repeat(la[..., :1], 3, -1), la[..., 1]))


def test_gray_with_trns_on_white():
    g = np.array([[0, 7, 200]], np.uint8)
    got = load_image(_png(Image.fromarray(g, "L"), transparency=7))
    np.testing.assert_array_equal(got[0, :, 0], [0, 255, 200])


RAMP16 = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16).reshape(8, 32)  # 0..65535


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_gray_scaled_not_clipped(mode):
    arr = RAMP16.astype({"I;16": "<u2", "I;16B": ">u2", "I": np.int32}[mode])
    pil = Image.fromarray(arr) if mode != "I;16B" else Image.frombytes("I;16B", (32, 8), arr.tobytes())
    assert pil.mode == mode
    want = np.repeat(np.arange(256, dtype=np.uint8).reshape(8, 32)[..., None], 3, -1)  # v*257 -> v
    np.testing.assert_array_equal(to_rgb_uint8(pil), want)
    fmt = "PNG" if mode == "I;16" else "TIFF"
    got = load_image(_png(pil, format=fmt))
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) == 256


def test_sixteen_bit_rounding():
    v = np.array([[0, 128, 129, 385, 65535, 1000]], np.uint16)
    got = to_rgb_uint8(v)[0, :, 0]
    np.testing.assert_array_equal(got, np.floor(v[0] / 257 + 0.5).astype(np.uint8))
    with pytest.raises(ValueError, match="16-bit range"):
        to_rgb_uint8(Image.fromarray(np.array([[70000]], np.int32)))


def test_cmyk():
    cmyk = RNG.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    want = np.floor(255.0 * (1 - c / 255) * (1 - k / 255) + 0.5).astype(np.uint8)
    pil = Image.frombytes("CMYK", (5, 3), cmyk.tobytes())
    np.testing.assert_array_equal(load_image(_png(pil, format="TIFF")), want)
    np.testing.assert_array_equal(to_rgb_uint8(pil), want)


def test_float_mode_and_bad_data_raise():
    with pytest.raises(ValueError, match="mode 'F'"):
        to_rgb_uint8(Image.fromarray(np.zeros((2, 2), np.float32)))
    with pytest.raises(ValueError, match="cannot decode"):
        load_image(b"not an image")
    with pytest.raises(ValueError, match="dtype float32"):
        to_rgb_uint8(np.zeros((2, 2, 3), np.float32))


def _exif_png(stored: np.ndarray, orientation: int) -> bytes:
    pil = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _png(pil, exif=exif)


@pytest.mark.parametrize("orientation,expect", [
    (1, lambda a: a), (3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, k=-1)), (8, lambda a: np.rot90(a, k=1)),
    (2, lambda a: a[:, ::-1]),
])
def test_exif_orientation(orientation, expect, tmp_path):
    stored = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    data = _exif_png(stored, orientation)
    np.testing.assert_array_equal(load_image(data), expect(stored))  # default: as HF's load_image
    np.testing.assert_array_equal(load_image(data, exif_transpose=False), stored)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_image(str(path)), expect(stored))


def test_every_path_uses_the_loader(tmp_path):
    """CLI reader, TFDS decoder and the pipeline give the composited / scaled pixels."""
    from sif_jax.data.image import read_image_file
    from sif_jax.data.tfds_sif import decode_image

    data = _png(Image.fromarray(RGBA, "RGBA"))
    path = tmp_path / "a.png"
    path.write_bytes(data)
    want = _over_white(RGBA[..., :3], RGBA[..., 3])
    np.testing.assert_array_equal(read_image_file(str(path)), want)
    np.testing.assert_array_equal(decode_image(data), want)
    rot = _exif_png(RGBA[..., :3].copy(), 6)
    np.testing.assert_array_equal(decode_image(rot), np.rot90(RGBA[..., :3], k=-1))


def test_pipeline_reads_paths_through_the_loader(tmp_path):
    from sif_jax.data.pipeline import Preprocessor
    from sif_jax.data.tokenizer import BuiltinTokenizer
    from sif_jax.model.config import tiny

    rgba = np.zeros((56, 56, 4), np.uint8)  # fully transparent: white after compositing
    path = tmp_path / "t.png"
    Image.fromarray(rgba, "RGBA").save(path)
    pre = Preprocessor(BuiltinTokenizer(), tiny())
    ex = {"id": "t", "image": str(path), "depth": None, "problem": "q", "answer": "a", "choices": [],
          "boxes": np.zeros((0, 4), np.float32), "trace": "", "index": 0}
    out = pre(ex)
    white = pre(ex | {"image": np.full((56, 56, 3), 255, np.uint8)})
    np.testing.assert_array_equal(out["pixel_values"], white["pixel_values"])


def test_depth_sixteen_bit_not_clipped(tmp_path):
    from sif_jax.data.records import load_depth_png, save_depth_png
    from sif_jax.data.tfds_sif import decode_depth, depth_png_bytes

    depth = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    q = np.round(depth * 65535) / 65535
    save_depth_png(depth, tmp_path / "d.png")
    np.testing.assert_allclose(load_depth_png(tmp_path / "d.png"), q, atol=1e-7)
    np.testing.assert_allclose(decode_depth(depth_png_bytes(depth)), q, atol=1e-7)
    big = Image.frombytes("I;16B", (8, 8), np.round(depth * 65535).astype(">u2").tobytes())
    np.testing.assert_allclose(load_depth(_png(big, format="TIFF")), q, atol=1e-7)
    np.testing.assert_allclose(load_depth(_png(Image.fromarray(np.full((2, 2), 51, np.uint8)))), 0.2, atol=1e-7)
    with pytest.raises(ValueError, match="unsupported mode 'F'"):
        load_depth(_png(Image.fromarray(np.zeros((2, 2), np.float32)), format="TIFF"))


# ---------------------------------------------------------------------------- smart_resize bounds


def test_smart_resize_issue_cases_stay_in_budget():
    budget = 64 * 28 * 28
    for h, w in ((20, 3900), (10, 1999), (3900, 20), (1999, 10)):
        hb, wb = im_mod._hf_smart_resize(h, w, 28, 56 * 56, budget)
        got = smart_resize(h, w, 28, 56 * 56, budget)
        assert got[0] % 28 == 0 and got[1] % 28 == 0
        assert 56 * 56 <= got[0] * got[1] <= budget, (h, w, got, (hb, wb))
    assert im_mod._hf_smart_resize(20, 3900, 28, 56 * 56, budget) == (28, 3108)  # HF: 1.73x the budget
    # min == max: the only sizes are 1x4, 2x2, 4x1 cells; 100x150 -> 2x2 (HF's ceil gives 2x3 cells).
    assert smart_resize(100, 150, 28, 3136, 3136) == (56, 56)


def _aspect_oracle(h, w, hh, ww, f) -> bool:
    """Some scale s: each side within one factor of s times the original side."""
    s_lo = max(0.0, (hh - f) / h, (ww - f) / w)
    s_hi = min((hh + f) / h, (ww + f) / w)
    return s_lo <= s_hi


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.sampled_from([8, 14, 28, 32]),
       st.integers(0, 4000), st.integers(1, 3000))
def test_smart_resize_bounds_property(h, w, factor, min_cells_x10, span_cells_x10):
    if max(h, w) / min(h, w) > 200:
        with pytest.raises(ValueError, match="aspect ratio"):
            smart_resize(h, w, factor, 0, 10**9)
        return
    min_pixels = min_cells_x10 * factor * factor // 10
    max_pixels = max(min_pixels, factor * factor) + span_cells_x10 * factor * factor // 10
    try:
        hh, ww = smart_resize(h, w, factor, min_pixels, max_pixels)
    except ValueError as e:
        assert "cannot be resized" in str(e)
        return
    assert hh % factor == 0 and ww % factor == 0 and hh >= factor and ww >= factor
    assert min_pixels <= hh * ww <= max_pixels
    assert _aspect_oracle(h, w, hh, ww, factor)
    hb, wb = im_mod._hf_smart_resize(h, w, factor, min_pixels, max_pixels)
    if min_pixels <= hb * wb <= max_pixels and min(hb, wb) >= factor:
        assert (hh, ww) == (hb, wb)  # HF parity wherever HF keeps its own bound


def test_smart_resize_rejects_impossible_budgets():
    with pytest.raises(ValueError, match="below one 28x28 cell"):
        smart_resize(100, 100, 28, 0, 700)
    with pytest.raises(ValueError, match="min_pixels=5 > max_pixels=4"):
        smart_resize(100, 100, 28, 5, 4)
