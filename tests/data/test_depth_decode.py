"""SIF-50K depth maps: `image.load_depth` against SIFThinker's decoding rule, re-derived here.

SIFThinker (`load_depth_from_color`, data_generation/depth_est.py): palette = Spectral_r at i/255,
`(rgb * 255).astype(uint8)`; each pixel -> index of the nearest palette colour (KD-tree, Euclidean);
depth = 1 - index / 255. A three-channel grey image (channels within 2) -> channel 0 / 255, not
inverted.
"""

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image
from scipy.spatial import KDTree

from sif_jax.data.image import decode_spectral_depth, load_depth, spectral_r_palette
from sif_jax.data.records import load_depth_png


def sifthinker_palette():
    return (plt.get_cmap("Spectral_r")(np.arange(256) / 255.0)[:, :3] * 255).astype(np.uint8)


def sifthinker_decode(rgb):
    _, index = KDTree(sifthinker_palette()).query(rgb.reshape(-1, 3), k=1)
    return 1.0 - index.reshape(rgb.shape[:2]).astype(np.float32) / 255.0


def png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_palette_is_sifthinkers():
    np.testing.assert_array_equal(spectral_r_palette(), sifthinker_palette())


def test_top_to_bottom_gradient_decodes_near_to_far(tmp_path):
    # Depth Anything draws disparity (near = high) with Spectral_r: index 255 at the top = near.
    index = np.repeat(np.arange(255, -1, -1), 2)[:, None].repeat(6, axis=1)  # [512, 6]
    rgb = sifthinker_palette()[index]
    path = tmp_path / "x_d.png"
    Image.fromarray(rgb).save(path)
    depth = load_depth_png(path)
    np.testing.assert_allclose(depth, 1.0 - index / 255.0, atol=1e-6)
    assert depth[0, 0] == 0.0 and depth[-1, 0] == 1.0  # 0 = near, as SIFThinker's rewards read it
    np.testing.assert_allclose(depth, sifthinker_decode(rgb), atol=1e-6)


def test_off_palette_colours_match_the_kdtree_rule():
    rng = np.random.default_rng(0)
    # palette colours with JPEG-like noise, plus arbitrary colours
    base = sifthinker_palette()[rng.integers(0, 256, (40, 30))].astype(int)
    noisy = np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
    noisy[0] = rng.integers(0, 256, (30, 3))
    got = decode_spectral_depth(noisy)
    np.testing.assert_array_equal(load_depth(png(noisy)), got)
    # Both pick a nearest palette colour; neighbouring Spectral_r colours are close, so integer
    # pixels are often equidistant from two: there the KD-tree's choice is arbitrary and ours is
    # the lower index. Compare the distances everywhere and the depths where the nearest is unique.
    palette = sifthinker_palette().astype(float)
    pixels = noisy.reshape(-1, 3).astype(float)
    dist = np.linalg.norm(pixels[:, None] - palette[None], axis=-1)
    ours = np.rint((1.0 - got.reshape(-1)) * 255).astype(int)
    np.testing.assert_allclose(dist[np.arange(len(pixels)), ours], dist.min(-1), atol=1e-9)
    unique = (np.isclose(dist, dist.min(-1, keepdims=True))).sum(-1) == 1
    assert unique.mean() > 0.5
    np.testing.assert_allclose(got.reshape(-1)[unique], sifthinker_decode(noisy).reshape(-1)[unique], atol=1e-6)


def test_grey_rgb_is_channel_zero_not_inverted():
    grey = np.linspace(0, 255, 64).astype(np.uint8).reshape(8, 8)
    rgb = np.stack([grey, np.clip(grey.astype(int) + 1, 0, 255).astype(np.uint8), grey], -1)  # within tolerance 2
    np.testing.assert_allclose(load_depth(png(rgb)), grey / 255.0, atol=1e-7)


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_single_channel_maps_are_the_stored_depth(mode):
    values = np.arange(16).reshape(4, 4)
    if mode == "L":
        a, scale = (values * 17).astype(np.uint8), 255.0
    else:
        a, scale = (values * 4369).astype(np.uint16), 65535.0
    np.testing.assert_allclose(load_depth(png(a)), a / scale, atol=1e-7)
