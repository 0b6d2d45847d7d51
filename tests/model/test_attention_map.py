"""`sif_jax.attention_map`: the one-pass probability map equals the kernel's one-hot region masses per visual
token, and its sum equals the visual mass of a full forward on prompt + completion."""

import dataclasses

import numpy as np
import pytest

from sif_jax.attention_map import visual_attention_map
from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.model.vlm import Qwen25VL, model_inputs, prepare_inputs


@pytest.fixture(scope="module")
def loaded(hf_tiny_dir):
    return load_hf_checkpoint(hf_tiny_dir)


def _prompt(config, io, row):
    ids, mask = io["input_ids"][row:row + 1], io["attention_mask"][row:row + 1]
    grids = io["image_grid_thw"]
    start = int(np.prod(grids[:row], axis=-1).sum())
    pixels = io["pixel_values"][start:start + int(np.prod(grids[row]))]
    return ids, mask, pixels, grids[row:row + 1]


@pytest.mark.parametrize("row, layers", [(0, (-1,)), (1, (0, 2))])
def test_probabilities_equal_one_hot_kernel_masses(loaded, hf_tiny_io, row, layers):
    config, params = loaded
    ids, mask, pixels, grid = _prompt(config, hf_tiny_io, row)
    prompt = prepare_inputs(config, ids, mask, pixels, grid, pad_patches_to=64, batch_images=True)
    completion = np.array([[17, 42, 99, 5, 23]], np.int32)
    completion_mask = np.array([[True, True, True, True, False]])
    fast, fast_mass = visual_attention_map(params, prompt, completion, completion_mask, config=config, layers=layers)
    slow, slow_mass = visual_attention_map(params, prompt, completion, completion_mask, config=config, layers=layers,
                                           method="one_hot", chunk=7)
    assert fast.shape == slow.shape == (int((ids == config.image_token_id).sum()),)
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-7)
    assert fast_mass == pytest.approx(slow_mass, rel=1e-4)
    # The full forward's visual mass over the same completion rows (left padding included).
    full = np.concatenate([ids, completion], axis=1)
    full_mask = np.concatenate([mask, completion_mask.astype(mask.dtype)], axis=1)
    inputs = prepare_inputs(config, full, full_mask, pixels, grid)
    norm = tuple(sorted(i % config.text.num_layers for i in layers))
    _, aux = Qwen25VL(config).apply({"params": params}, **model_inputs(inputs), return_attention_mass=norm)
    rows = ids.shape[1] + np.flatnonzero(completion_mask[0])
    want = np.mean([np.asarray(aux["attention_mass"][i]["visual"])[0][:, rows].mean() for i in norm])
    assert float(fast.sum()) == pytest.approx(want, rel=1e-4)


def test_scanned_layout_uses_the_kernel_and_bad_method_is_refused(loaded, hf_tiny_io):
    from sif_jax.model.layout import to_layout

    config, params = loaded
    ids, mask, pixels, grid = _prompt(config, hf_tiny_io, 0)
    prompt = prepare_inputs(config, ids, mask, pixels, grid, pad_patches_to=64, batch_images=True)
    completion, completion_mask = np.array([[7, 8]], np.int32), np.ones((1, 2), bool)
    scanned = dataclasses.replace(config, scan_layers=True)
    heat, _ = visual_attention_map(to_layout(params, scanned), prompt, completion, completion_mask, config=scanned)
    ref, _ = visual_attention_map(params, prompt, completion, completion_mask, config=config)
    np.testing.assert_allclose(heat, ref, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="method='x'"):
        visual_attention_map(params, prompt, completion, completion_mask, config=config, method="x")
