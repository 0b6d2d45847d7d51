"""The model against Hugging Face Qwen2.5-VL on a tiny random config (fixture: make_hf_fixture.py)."""

import jax
import numpy as np
import pytest

from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.model.vlm import Qwen25VL, forward, model_inputs, prepare_inputs


@pytest.fixture(scope="module")
def loaded(hf_tiny_dir):
    return load_hf_checkpoint(hf_tiny_dir)


def test_fixture_exercises_the_geometry(loaded, hf_tiny_io):
    config, _ = loaded
    grids = hf_tiny_io["image_grid_thw"]
    merged = grids[:, 1:] // config.vision.spatial_merge_size
    assert (merged[:, 0] != merged[:, 1]).all(), "images must be non-square"
    assert (merged % config.vision.window_cells != 0).any(), "an edge window is needed"
    assert (np.ceil(merged / config.vision.window_cells).prod(axis=1) > 1).all(), "several windows"
    assert config.vision.fullatt_block_indexes and config.vision.depth > len(config.vision.fullatt_block_indexes)
    assert config.text.num_kv_heads < config.text.num_heads
    mask = hf_tiny_io["attention_mask"]
    assert mask.sum(1)[0] != mask.sum(1)[1] and (mask == 0).any()


def test_positions_match_hf_get_rope_index(loaded, hf_tiny_io):
    config, _ = loaded
    inputs = prepare_inputs(config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                            hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
    valid = hf_tiny_io["attention_mask"].astype(bool)
    np.testing.assert_array_equal(inputs["positions"][:, valid], hf_tiny_io["positions"][:, valid])
    np.testing.assert_array_equal(inputs["rope_deltas"], hf_tiny_io["rope_deltas"])


def test_logits_match_hf_fp32(loaded, hf_tiny_io):
    config, params = loaded
    logits, _ = forward(params, config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                        hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
    valid = hf_tiny_io["attention_mask"].astype(bool)
    err = np.abs(np.asarray(logits) - hf_tiny_io["logits"])[valid].max()
    assert err <= 1e-4, f"max |logits - HF| = {err}"


def test_padded_patch_bucket_gives_the_same_logits(loaded, hf_tiny_io):
    """Padding the patches to a static bucket (segment -1) must not change any real logit."""
    config, params = loaded
    exact = prepare_inputs(config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                           hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
    bucket = prepare_inputs(config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                            hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"], pad_patches_to=128)
    model = Qwen25VL(config)
    a, _ = model.apply({"params": params}, **model_inputs(exact))
    b, _ = jax.jit(model.apply)({"params": params}, **model_inputs(bucket))
    valid = hf_tiny_io["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(a)[valid], np.asarray(b)[valid], atol=1e-5)


def test_batched_image_layout_gives_the_same_logits(loaded, hf_tiny_io):
    """One image per row, each padded to a patch bucket, matches HF's flat layout."""
    config, params = loaded
    batched = prepare_inputs(config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                             hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"], pad_patches_to=64,
                             batch_images=True)
    assert batched["pixel_values"].shape == (2, 64, config.vision.patch_dim)
    logits, _ = jax.jit(Qwen25VL(config).apply)({"params": params}, **model_inputs(batched))
    valid = hf_tiny_io["attention_mask"].astype(bool)
    err = np.abs(np.asarray(logits) - hf_tiny_io["logits"])[valid].max()
    assert err <= 1e-4, err
