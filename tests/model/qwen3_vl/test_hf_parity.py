"""Qwen3-VL against Hugging Face transformers on a tiny random config (fixture: make_hf_fixture.py)."""

import jax
import numpy as np

from sif_jax.model.qwen3_vl.image import process_image
from sif_jax.model.qwen3_vl.model import Qwen3VL, forward, model_inputs, prepare_inputs


def _prepare(config, io, **kw):
    return prepare_inputs(config, io["input_ids"], io["attention_mask"], io["pixel_values"], io["image_grid_thw"],
                          **kw)


def test_fixture_exercises_the_architecture(qwen3_loaded, qwen3_io):
    config, _ = qwen3_loaded
    grids = qwen3_io["image_grid_thw"]
    merged = grids[:, 1:] // config.vision.spatial_merge_size
    assert (merged[:, 0] != merged[:, 1]).all(), "images must be non-square"
    assert len({tuple(g) for g in grids.tolist()}) == 2, "images of different sizes"
    assert (grids[:, 1:] != config.vision.num_grid_per_side).any(), "the position grid must be resampled"
    assert len(config.vision.deepstack_visual_indexes) >= 2
    assert config.text.num_kv_heads < config.text.num_heads
    assert not config.text.tie_word_embeddings
    mask = qwen3_io["attention_mask"]
    assert mask.sum(1)[0] != mask.sum(1)[1] and (mask == 0).any()


def test_image_preprocessing_matches_hf_processor(qwen3_loaded, qwen3_io):
    config, _ = qwen3_loaded
    pixels, grids = [], []
    for i in range(2):
        out = process_image(qwen3_io[f"image_{i}"], config.vision, int(qwen3_io["min_pixels"]),
                            int(qwen3_io["max_pixels"]))
        pixels.append(out.pixel_values)
        grids.append(out.image_grid_thw)
    np.testing.assert_array_equal(np.concatenate(grids), qwen3_io["image_grid_thw"])
    np.testing.assert_allclose(np.concatenate(pixels), qwen3_io["pixel_values"], rtol=0, atol=1e-6)


def test_positions_match_hf_get_rope_index(qwen3_loaded, qwen3_io):
    config, _ = qwen3_loaded
    inputs = _prepare(config, qwen3_io)
    valid = qwen3_io["attention_mask"].astype(bool)
    np.testing.assert_array_equal(inputs["positions"][:, valid], qwen3_io["positions"][:, valid])
    np.testing.assert_array_equal(inputs["rope_deltas"], qwen3_io["rope_deltas"])


def test_logits_match_hf_fp32(qwen3_loaded, qwen3_io):
    config, params = qwen3_loaded
    logits, _ = forward(params, config, qwen3_io["input_ids"], qwen3_io["attention_mask"], qwen3_io["pixel_values"],
                        qwen3_io["image_grid_thw"])
    valid = qwen3_io["attention_mask"].astype(bool)
    err = np.abs(np.asarray(logits) - qwen3_io["logits"])[valid].max()
    assert err <= 1e-4, f"max |logits - HF| = {err}"


def test_deepstack_matters(qwen3_loaded, qwen3_io):
    """Dropping the DeepStack mergers' features changes the logits (the fixture tests them)."""
    config, params = qwen3_loaded
    no_deepstack = config.replace(vision=config.vision.__class__(
        **{**config.vision.__dict__, "deepstack_visual_indexes": ()}))
    visual = {k: v for k, v in params["visual"].items() if not k.startswith("deepstack_merger_")}
    logits, _ = forward({**params, "visual": visual}, no_deepstack, qwen3_io["input_ids"],
                        qwen3_io["attention_mask"], qwen3_io["pixel_values"], qwen3_io["image_grid_thw"])
    valid = qwen3_io["attention_mask"].astype(bool)
    assert np.abs(np.asarray(logits) - qwen3_io["logits"])[valid].max() > 1e-2


def test_padded_and_batched_patch_layouts_give_the_same_logits(qwen3_loaded, qwen3_io):
    config, params = qwen3_loaded
    valid = qwen3_io["attention_mask"].astype(bool)
    model = jax.jit(Qwen3VL(config).apply)
    bucket = _prepare(config, qwen3_io, pad_patches_to=96)
    batched = _prepare(config, qwen3_io, pad_patches_to=48, batch_images=True)
    assert batched["pixel_values"].shape == (2, 48, config.vision.patch_dim)
    for inputs in (bucket, batched):
        logits, _ = model({"params": params}, **model_inputs(inputs))
        err = np.abs(np.asarray(logits) - qwen3_io["logits"])[valid].max()
        assert err <= 1e-4, err


def test_scanned_layers_give_the_same_logits(qwen3_loaded, qwen3_io):
    from sif_jax.model.layout import stack_layers

    config, params = qwen3_loaded
    scanned = config.replace(scan_layers=True)
    logits, _ = forward(stack_layers(params, config), scanned, qwen3_io["input_ids"], qwen3_io["attention_mask"],
                        qwen3_io["pixel_values"], qwen3_io["image_grid_thw"])
    valid = qwen3_io["attention_mask"].astype(bool)
    assert np.abs(np.asarray(logits) - qwen3_io["logits"])[valid].max() <= 1e-4


def test_attention_masses_and_hidden(qwen3_loaded, qwen3_io):
    config, params = qwen3_loaded
    inputs = model_inputs(_prepare(config, qwen3_io))
    b, length = qwen3_io["input_ids"].shape
    region = np.zeros((b, length), bool)
    region[:, -8:] = True
    _, aux = Qwen3VL(config).apply({"params": params}, **inputs, region_mask=region, return_attention_mass=(0, 2),
                                   return_hidden=True)
    assert set(aux["attention_mass"]) == {0, 2}
    for masses in aux["attention_mass"].values():
        assert masses["region"].shape == (b, config.text.num_heads, length)
        assert masses["visual"].shape == (b, config.text.num_heads, length)
    assert aux["hidden"].shape == (b, length, config.text.hidden_size)
    head = np.asarray(aux["hidden"]) @ np.asarray(params["text"]["lm_head"]["kernel"])
    valid = qwen3_io["attention_mask"].astype(bool)
    assert np.abs(head - qwen3_io["logits"])[valid].max() <= 1e-4


def test_prepare_inputs_names_what_does_not_match(qwen3_loaded, qwen3_io):
    import pytest

    config, _ = qwen3_loaded
    ids, mask, pv, grids = (qwen3_io[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw"))
    with pytest.raises(ValueError, match="image-pad tokens"):
        prepare_inputs(config, ids, mask, pv, grids[:1])
    with pytest.raises(ValueError, match="pixel_values has shape"):
        prepare_inputs(config, ids, mask, pv[:-4], grids)
    with pytest.raises(ValueError, match="no pixel_values"):
        prepare_inputs(config, ids, mask)
    with pytest.raises(ValueError, match="outside"):
        prepare_inputs(config, ids + config.text.vocab_size, mask, pv, grids)
    with pytest.raises(ValueError, match="image_grid_thw"):
        prepare_inputs(config, ids, mask, pv, grids + [[0, 1, 0], [0, 0, 0]])


def test_gradients_reach_the_position_table_and_deepstack_mergers(qwen3_loaded, qwen3_io):
    import jax.numpy as jnp

    config, params = qwen3_loaded
    inputs = model_inputs(_prepare(config, qwen3_io))

    def loss(p):
        logits, _ = Qwen3VL(config).apply({"params": p}, **inputs)
        return jnp.mean(jnp.square(logits))

    grads = jax.grad(loss)(params)["visual"]
    for name in ("pos_embed", "deepstack_merger_0", "deepstack_merger_1", "merger"):
        total = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads[name]))
        assert total > 0, name
