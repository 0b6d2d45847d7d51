"""Prompts with two images per row (SIFThinker's RGB + depth turn) against Hugging Face Qwen2.5-VL
(fixture: make_two_image_fixture.py): M-RoPE positions equal `get_rope_index`, logits match."""

import os

import jax
import numpy as np
import pytest

from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.model.vlm import Qwen25VL, model_inputs, prepare_inputs


@pytest.fixture(scope="module")
def loaded(hf_tiny_dir):
    return load_hf_checkpoint(hf_tiny_dir)


@pytest.fixture(scope="module")
def two(hf_tiny_dir):
    with np.load(os.path.join(hf_tiny_dir, "two_images.npz")) as data:
        return dict(data)


@pytest.mark.parametrize("batch_images", [False, True])
def test_positions_equal_hf_get_rope_index(loaded, two, batch_images):
    config, _ = loaded
    assert len(two["image_grid_thw"]) == 2 * two["input_ids"].shape[0]
    inputs = prepare_inputs(config, two["input_ids"], two["attention_mask"], two["pixel_values"],
                            two["image_grid_thw"], pad_patches_to=64 if batch_images else None,
                            batch_images=batch_images)
    valid = two["attention_mask"].astype(bool)
    np.testing.assert_array_equal(inputs["positions"][:, valid], two["positions"][:, valid])
    np.testing.assert_array_equal(inputs["rope_deltas"], two["rope_deltas"])


def test_logits_match_hf_in_the_batched_image_layout(loaded, two):
    config, params = loaded
    inputs = prepare_inputs(config, two["input_ids"], two["attention_mask"], two["pixel_values"],
                            two["image_grid_thw"], pad_patches_to=64, batch_images=True)
    assert inputs["pixel_values"].shape == (4, 64, config.vision.patch_dim)  # two images per row
    logits, _ = jax.jit(Qwen25VL(config).apply)({"params": params}, **model_inputs(inputs))
    valid = two["attention_mask"].astype(bool)
    err = np.abs(np.asarray(logits) - two["logits"])[valid].max()
    assert err <= 1e-4, f"max |logits - HF| = {err}"
