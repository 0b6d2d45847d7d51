"""Qwen3-VL through the one model interface (`sif_jax.model.family`), against the HF fixture."""

import jax
import numpy as np
import pytest

import sif_jax.model as sm
from sif_jax.model.family import family_for_hf_config, family_of, get_preset
from sif_jax.model.qwen3_vl import convert
from sif_jax.model.qwen3_vl.config import Qwen3VLConfig


@pytest.fixture(scope="module")
def loaded(qwen3_dir):
    """The fixture loaded through the family-dispatching loader."""
    return sm.load_hf_checkpoint(qwen3_dir)


def _rows(qwen3_io, config):
    """The fixture's two images as per-example arrays (one image per row), split from the flat HF arrays."""
    grids = qwen3_io["image_grid_thw"]
    counts = np.prod(grids, axis=-1)
    starts = np.concatenate([[0], np.cumsum(counts)])
    return [{"pixel_values": qwen3_io["pixel_values"][starts[i]:starts[i + 1]], "image_grid_thw": grids[i:i + 1]}
            for i in range(len(grids))]


def test_registered_and_chosen_by_config_and_model_type(qwen3_dir):
    family = family_of(get_preset("qwen3_vl_tiny"))
    assert family.name == Qwen3VLConfig.family == "qwen3_vl"
    assert set(family.presets) == {"qwen3_vl_tiny", "qwen3_vl_2b", "qwen3_vl_4b", "qwen3_vl_8b"}
    assert family_for_hf_config({"model_type": "qwen3_vl"}) is family
    assert family.position_axes == 3 and family.cell_size(get_preset("qwen3_vl_tiny")) == 32


def test_family_loader_equals_the_subpackage_loader(loaded, qwen3_loaded):
    (config, params), (want_config, want) = loaded, qwen3_loaded
    assert config == want_config
    flat, ref = jax.tree_util.tree_leaves_with_path(params), dict(jax.tree_util.tree_leaves_with_path(want))
    assert len(flat) == len(ref)
    for path, leaf in flat:
        np.testing.assert_array_equal(leaf, ref[path])


def test_forward_matches_hf_logits(loaded, qwen3_io):
    config, params = loaded
    hf = {k: qwen3_io[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    logits, _ = sm.forward(params, config, **hf)
    valid = qwen3_io["attention_mask"].astype(bool)
    err = np.abs(np.asarray(logits) - qwen3_io["logits"])[valid].max()
    assert err <= 1e-4, f"max |logits - HF| = {err}"


def test_collated_batch_matches_hf_logits_and_greedy(loaded, qwen3_io):
    """The batched-image layout of `collate_images` (one image per row, padded patches) gives HF's
    logits, and the shared KV cache (prefill with DeepStack, text-only decode) HF's greedy tokens."""
    from sif_jax.model.cache import decode_step, prefill

    config, params = loaded
    family = family_of(config)
    batch = family.collate_images(config, qwen3_io["input_ids"], qwen3_io["attention_mask"],
                                  _rows(qwen3_io, config), pad_to=48)
    assert "rope_deltas" not in batch
    assert batch["pixel_values"].shape == (2, 48, config.vision.patch_dim)
    for key in ("patch_positions", "frame_segments", "pos_indices", "pos_weights"):
        assert batch[key].shape[:2] == (2, 48), key
    assert int(batch["num_patches"]) == qwen3_io["pixel_values"].shape[0]
    inputs = family.model_inputs(batch)
    logits, _ = family.module(config).apply({"params": params}, **inputs)
    valid = qwen3_io["attention_mask"].astype(bool)
    err = np.abs(np.asarray(logits) - qwen3_io["logits"])[valid].max()
    assert err <= 1e-4, f"max |logits - HF| = {err}"

    steps = qwen3_io["greedy_tokens"].shape[1]
    logits, cache, _ = prefill(params, config, inputs, inputs["input_ids"].shape[1] + steps)
    token = np.argmax(logits[:, -1], axis=-1)
    tokens = [token]
    for _ in range(steps - 1):
        out, cache, _ = decode_step(params, config, token, cache)
        token = np.argmax(out, axis=-1)
        tokens.append(token)
    np.testing.assert_array_equal(np.stack(tokens, axis=1), qwen3_io["greedy_tokens"])


def test_batch_axes_cover_the_collated_model_inputs(loaded, qwen3_io):
    from sif_jax.batch import ModelInputs, batch_axis

    config, _ = loaded
    family = family_of(config)
    batch = family.collate_images(config, qwen3_io["input_ids"], qwen3_io["attention_mask"],
                                  _rows(qwen3_io, config), pad_to=48)
    for key, value in family.model_inputs(batch).items():
        assert batch_axis(ModelInputs, key) is not None, key
        assert value.shape[batch_axis(ModelInputs, key)] == 2, key


def test_process_example_image_matches_the_hf_processor_and_marks_regions(loaded, qwen3_io):
    config, _ = loaded
    family = family_of(config)
    rgb = qwen3_io["image_0"]  # 70 x 100 px -> 64 x 96 (2 x 3 cells of 32 px)
    img = family.process_example_image(rgb, np.array([[0.0, 0.0, 0.3, 0.4]], np.float32), config,
                                       min_pixels=int(qwen3_io["min_pixels"]), max_pixels=int(qwen3_io["max_pixels"]))
    np.testing.assert_array_equal(img.arrays["image_grid_thw"], qwen3_io["image_grid_thw"][:1])
    n = int(np.prod(qwen3_io["image_grid_thw"][0]))
    np.testing.assert_allclose(img.arrays["pixel_values"], qwen3_io["pixel_values"][:n], rtol=0, atol=1e-6)
    assert img.num_tokens == n // 4 and img.num_patches == n
    # Box x in [0, 30) px, y in [0, 28) px of 100 x 70: the top-left cell of the 2 x 3 grid.
    np.testing.assert_array_equal(img.region_cells, [True, False, False, False, False, False])
    focus = np.array([[False, True, True], [False, False, True]])
    img = family.process_example_image(rgb, np.zeros((0, 4), np.float32), config, focus=focus,
                                       min_pixels=int(qwen3_io["min_pixels"]), max_pixels=int(qwen3_io["max_pixels"]))
    np.testing.assert_array_equal(img.region_cells, focus.reshape(-1))
    with pytest.raises(ValueError, match="focus area"):
        family.process_example_image(rgb, np.zeros((0, 4), np.float32), config, focus=np.ones((4, 4), bool),
                                     min_pixels=int(qwen3_io["min_pixels"]), max_pixels=int(qwen3_io["max_pixels"]))


def test_model_view_is_the_resized_image_and_token_grid(loaded, qwen3_io):
    config, _ = loaded
    family = family_of(config)
    shown, grid = family.model_view(config, qwen3_io["image_1"], {"image_grid_thw": qwen3_io["image_grid_thw"][1:]})
    assert shown.shape == (160, 64, 3) and shown.dtype == np.uint8  # grid [1, 10, 4] of 16 px patches
    assert grid == (5, 2)


def test_hf_rules_round_trip(loaded, tmp_path):
    config, params = loaded
    from sif_jax.convert.hf import hf_tensors

    shared, own = dict(hf_tensors(config, params)), dict(convert.hf_tensors(config, params))
    assert shared.keys() == own.keys()
    for name, value in own.items():
        np.testing.assert_array_equal(shared[name], value, err_msg=name)
    sm.save_hf_checkpoint(config, params, tmp_path)
    again, back = sm.load_hf_checkpoint(tmp_path)
    assert again == config
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(params),
                                 jax.tree_util.tree_leaves_with_path(back), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=str(path))


def test_heat_map_masses_include_deepstack(loaded, qwen3_io):
    """`generate.visual_attention_map` on a Qwen3-VL row: its visual mass (and the heat's sum) equals
    the full forward's (`return_attention_mass`, DeepStack included) on prompt + completion."""
    from sif_jax.generate import visual_attention_map

    config, params = loaded
    family = family_of(config)
    ids, mask = qwen3_io["input_ids"][:1], qwen3_io["attention_mask"][:1]
    prompt = family.collate_images(config, ids, mask, _rows(qwen3_io, config)[:1], pad_to=24)
    completion = qwen3_io["greedy_tokens"][:1, :4].astype(np.int32)
    heat, visual_mass = visual_attention_map(params, prompt, completion, np.ones_like(completion, bool),
                                             config=config, layers=(-1,))
    full = np.concatenate([ids, completion], axis=1)
    inputs = family.prepare_inputs(config, full, np.ones_like(full), qwen3_io["pixel_values"][:24],
                                   image_grid_thw=qwen3_io["image_grid_thw"][:1])
    last = config.text.num_layers - 1
    _, aux = family.module(config).apply({"params": params}, **family.model_inputs(inputs),
                                         return_attention_mass=(last,))
    want = float(np.asarray(aux["attention_mass"][last]["visual"])[0, :, ids.shape[1]:].mean())
    assert heat.shape == (6,)  # the 2 x 3 visual tokens
    assert visual_mass == pytest.approx(want, abs=1e-5)
    assert float(heat.sum()) == pytest.approx(want, abs=1e-5)
