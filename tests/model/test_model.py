"""Model behaviour a user relies on: geometry, input checks, attention masses, jit/eval_shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.model.config import get_preset
from sif_jax.model.geometry import vision_geometry
from sif_jax.model.vlm import Qwen25VL, forward, init_params, model_inputs, prepare_inputs


def hf_window_groups(grid, merge, window_cells):
    """HF's `get_vision_window_index` algorithm (window order + lengths), re-derived in NumPy."""
    t, h, w = grid
    gh, gw = h // merge, w // merge
    index = np.arange(t * gh * gw).reshape(t, gh, gw)
    pad_h, pad_w = window_cells - gh % window_cells, window_cells - gw % window_cells
    padded = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-100)
    nh, nw = (gh + pad_h) // window_cells, (gw + pad_w) // window_cells
    padded = padded.reshape(t, nh, window_cells, nw, window_cells).transpose(0, 1, 3, 2, 4)
    padded = padded.reshape(t, nh * nw, -1)
    return [set(win[win != -100].tolist()) for frame in padded for win in frame if (win != -100).any()]


@pytest.mark.parametrize("grid", [(1, 6, 10), (1, 4, 6), (2, 8, 4), (1, 16, 18)])
def test_window_segments_match_hf_windows(grid):
    config = get_preset("tiny").vision
    geo = vision_geometry(np.array([grid]), config)
    merged_segments = geo.window_segments[:: config.merge_unit]
    ours = {}
    for token, seg in enumerate(merged_segments):
        ours.setdefault(int(seg), set()).add(token)
    assert sorted(map(sorted, ours.values())) == sorted(
        map(sorted, hf_window_groups(grid, config.spatial_merge_size, config.window_cells))
    )
    # each merge group of patches shares one window, and frames are separate full-attention segments
    assert (geo.window_segments.reshape(-1, config.merge_unit) == merged_segments[:, None]).all()
    assert len(set(geo.frame_segments.tolist())) == grid[0]


def test_patch_positions_are_hf_block_major_order():
    geo = vision_geometry(np.array([[1, 4, 6]]), get_preset("tiny").vision)
    # the first merge group is the top-left 2x2 patch block, then the block to its right
    assert geo.patch_positions[:8].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]


@pytest.fixture(scope="module")
def tiny():
    config = get_preset("tiny")
    return config, init_params(config, jax.random.key(0))


def tiny_batch(config, rng, grid=(1, 4, 6)):
    pads = int(np.prod(grid)) // config.vision.merge_unit
    ids = np.array([[config.bos_token_id, 40, config.vision_start_token_id] + [config.image_token_id] * pads
                    + [config.vision_end_token_id, 50, 60]])
    pixels = rng.standard_normal((int(np.prod(grid)), config.vision.patch_dim)).astype(np.float32)
    return ids, pixels, np.array([grid])


def test_image_token_count_mismatch_is_a_clear_error(tiny):
    config, params = tiny
    ids, pixels, grid = tiny_batch(config, np.random.default_rng(0))
    ids = np.concatenate([ids[:, :4], ids[:, 5:]], axis=1)  # one image-pad too few
    with pytest.raises(ValueError, match="image features and image tokens do not match: input_ids hold 5"):
        forward(params, config, ids, None, pixels, grid)
    with pytest.raises(ValueError, match="pixel_values given without image_grid_thw"):
        forward(params, config, ids, None, pixels, None)
    with pytest.raises(ValueError, match="token 5000"):
        forward(params, config, np.array([[5000]]))


def test_attention_masses_of_chosen_layers(tiny):
    config, params = tiny
    ids, pixels, grid = tiny_batch(config, np.random.default_rng(1))
    inputs = prepare_inputs(config, ids, None, pixels, grid)
    visual = ids == config.image_token_id
    region = np.zeros_like(visual)
    region[0, np.flatnonzero(visual[0])[:2]] = True  # the first two visual tokens
    logits, aux = Qwen25VL(config).apply({"params": params}, **model_inputs(inputs),
                                         region_mask=jnp.asarray(region), return_attention_mass=(0, 3))
    assert set(aux["attention_mass"]) == {0, 3}
    for masses in aux["attention_mass"].values():
        r, v = np.asarray(masses["region"]), np.asarray(masses["visual"])
        assert r.shape == v.shape == (1, config.text.num_heads, ids.shape[1])
        assert (r <= v + 1e-6).all() and (v <= 1 + 1e-6).all()
        # causal: queries before the first image token cannot see any visual key
        assert np.allclose(v[..., : np.flatnonzero(visual[0])[0]], 0.0)
    plain, _ = Qwen25VL(config).apply({"params": params}, **model_inputs(inputs))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(plain), atol=1e-6)


def test_visual_scale_changes_logits_only_after_the_image(tiny):
    config, params = tiny
    ids, pixels, grid = tiny_batch(config, np.random.default_rng(2))
    inputs = model_inputs(prepare_inputs(config, ids, None, pixels, grid))
    model = Qwen25VL(config)
    base, _ = model.apply({"params": params}, **inputs)
    sharp, _ = model.apply({"params": params}, **inputs, visual_scale=jnp.full(ids.shape, 1.5))
    first_image = int(np.flatnonzero(ids[0] == config.image_token_id)[0])
    np.testing.assert_allclose(np.asarray(sharp)[0, :first_image], np.asarray(base)[0, :first_image], atol=1e-6)
    assert np.abs(np.asarray(sharp)[0, -1] - np.asarray(base)[0, -1]).max() > 1e-4


def test_init_under_eval_shape_and_jit_forward(tiny):
    config, params = tiny
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    assert jax.tree.structure(shapes) == jax.tree.structure(params)
    ids, pixels, grid = tiny_batch(config, np.random.default_rng(3))
    inputs = model_inputs(prepare_inputs(config, ids, None, pixels, grid))
    eager, _ = Qwen25VL(config).apply({"params": params}, **inputs)
    jitted, _ = jax.jit(Qwen25VL(config).apply)({"params": params}, **inputs)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), atol=1e-5)
    assert jitted.shape == (1, ids.shape[1], config.text.vocab_size) and jitted.dtype == jnp.float32
