"""LLaVA against Hugging Face on a tiny random config (fixture: make_hf_fixture.py)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.model import family
from sif_jax.model.cache import decode_step, prefill
from sif_jax.model.llava.config import LlavaConfig
from sif_jax.model.llava.inputs import positions_from_mask, process_image


def test_fixture_config_is_llava_1_5_shaped(llava_loaded):
    config, params = llava_loaded
    assert isinstance(config, LlavaConfig) and config.family == "llava"
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert config.image_seq_length == 16 and config.text.num_kv_heads == config.text.num_heads
    assert "layers_2" in params["vision_tower"] and "post_layernorm" in params["vision_tower"]


def test_logits_match_hf_fp32_padded_batch_of_two_images(llava_loaded, llava_io):
    config, params = llava_loaded
    mask = llava_io["attention_mask"]
    assert mask.sum(1)[0] != mask.sum(1)[1] and (mask == 0).any(), "the batch must be padded"
    assert llava_io["pixel_values"].shape[0] == 2
    logits, _ = family.forward(params, config, llava_io["input_ids"], mask, llava_io["pixel_values"])
    err = np.abs(np.asarray(logits) - llava_io["logits"])[mask.astype(bool)].max()
    assert err <= 1e-4, f"max |logits - HF| = {err}"


def test_positions_are_hf_generate_positions(llava_io):
    mask = llava_io["attention_mask"].astype(bool)
    np.testing.assert_array_equal(positions_from_mask(mask)[0][mask], llava_io["positions"][mask])


def test_image_processing_equals_hf_slow_processor(llava_loaded, llava_io):
    config, _ = llava_loaded
    for i in range(2):
        ours = process_image(llava_io[f"images_{i}"], config)
        np.testing.assert_allclose(ours, llava_io["pixel_values"][i], rtol=0, atol=1e-6)
    released = family.get_preset("llava_1_5_7b")
    ours = process_image(llava_io["released_image"], released)
    assert ours.shape == (3, 336, 336)
    np.testing.assert_allclose(ours[:, ::7, ::7], llava_io["released_pixels"], rtol=0, atol=1e-6)
    assert abs(float(ours.astype(np.float64).sum()) - float(llava_io["released_sum"])) < 1e-2


def test_kv_cache_greedy_decode_equals_full_forward_and_hf(llava_loaded, llava_io):
    config, params = llava_loaded
    fam = family.family_of(config)
    inputs = fam.prepare_inputs(config, llava_io["input_ids"], llava_io["attention_mask"], llava_io["pixel_values"])
    steps = llava_io["greedy_tokens"].shape[1]
    logits, cache, _ = prefill(params, config, inputs, inputs["input_ids"].shape[1] + steps)
    tokens, step_logits = [], [logits[:, -1]]
    token = jnp.argmax(logits[:, -1], axis=-1)
    for _ in range(steps):
        tokens.append(token)
        next_logits, cache, _ = decode_step(params, config, token, cache)
        step_logits.append(next_logits)
        token = jnp.argmax(next_logits, axis=-1)
    tokens = np.stack(tokens, axis=1)
    np.testing.assert_array_equal(tokens, llava_io["greedy_tokens"])
    # The full forward over prompt + generated tokens gives the decode's logits.
    ids = np.concatenate([llava_io["input_ids"], tokens], axis=1)
    mask = np.concatenate([llava_io["attention_mask"], np.ones_like(tokens)], axis=1)
    full, _ = family.forward(params, config, ids, mask, llava_io["pixel_values"])
    prompt_len = llava_io["input_ids"].shape[1]
    for t in range(steps):
        np.testing.assert_allclose(np.asarray(step_logits[t]), np.asarray(full[:, prompt_len - 1 + t]), atol=1e-4)


def test_save_load_round_trip_is_exact(llava_loaded, llava_dir, tmp_path):
    config, params = llava_loaded
    family.save_hf_checkpoint(config, params, tmp_path, max_shard_bytes=200_000)
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    config2, params2 = family.load_hf_checkpoint(tmp_path)
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_scan_layers_load_gives_the_same_logits(llava_dir, llava_io):
    config, params = family.load_hf_checkpoint(llava_dir, scan_layers=True)
    assert "layers" in params["text"]
    logits, _ = family.forward(params, config, llava_io["input_ids"], llava_io["attention_mask"],
                               llava_io["pixel_values"])
    mask = llava_io["attention_mask"].astype(bool)
    assert np.abs(np.asarray(logits) - llava_io["logits"])[mask].max() <= 1e-4


@pytest.mark.parametrize("name", ["llava_1_5_7b", "llava_1_5_13b"])
def test_released_preset_parameter_counts_equal_hf(llava_dir, name):
    with open(os.path.join(llava_dir, "released_param_counts.json")) as f:
        want = json.load(f)[name]
    config = family.get_preset(name)
    shapes = jax.eval_shape(lambda: family.init_params(config, jax.random.key(0)))
    assert family.count_params(shapes) == want
    with open(os.path.join(llava_dir, "released_configs.json")) as f:
        assert json.load(f)[name] == json.loads(json.dumps(config.to_hf_config()))
    assert LlavaConfig.from_hf_config(config.to_hf_config(), dtype="bfloat16", param_dtype="bfloat16") == config


def test_released_preset_geometry():
    config = family.get_preset("llava_1_5_7b")
    assert config.image_seq_length == 576 and config.vision.grid == 24
    assert family.get_family("llava").cell_size(config) == 14
