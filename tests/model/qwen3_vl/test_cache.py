"""KV-cache prefill + decode against the full forward and against HF's greedy generation."""

import jax
import jax.numpy as jnp
import numpy as np

from sif_jax.model.qwen3_vl.cache import decode_step, prefill
from sif_jax.model.qwen3_vl.model import Qwen3VL, model_inputs, prepare_inputs
from tests.model.decoding import decode_both_forms


def _greedy(params, config, inputs, steps):
    logits, cache, _ = prefill(params, config, inputs, inputs["input_ids"].shape[1] + steps)
    step = jax.jit(lambda p, t, c: decode_step(p, config, t, c), donate_argnums=())
    token = jnp.argmax(logits[:, -1], axis=-1)
    tokens, step_logits = [token], []
    for _ in range(steps - 1):
        out, cache, _ = step(params, token, cache)
        step_logits.append(out)
        token = jnp.argmax(out, axis=-1)
        tokens.append(token)
    return np.stack(tokens, axis=1), np.stack(step_logits, axis=1), cache


def test_greedy_decode_matches_hf_generate(qwen3_loaded, qwen3_io):
    config, params = qwen3_loaded
    inputs = prepare_inputs(config, qwen3_io["input_ids"], qwen3_io["attention_mask"], qwen3_io["pixel_values"],
                            qwen3_io["image_grid_thw"])
    tokens, _, _ = _greedy(params, config, inputs, qwen3_io["greedy_tokens"].shape[1])
    np.testing.assert_array_equal(tokens, qwen3_io["greedy_tokens"])


def test_decode_logits_equal_the_full_forward(qwen3_loaded, qwen3_io):
    """Teacher-forcing the decoded tokens through one full forward gives the decode-step logits."""
    config, params = qwen3_loaded
    inputs = prepare_inputs(config, qwen3_io["input_ids"], qwen3_io["attention_mask"], qwen3_io["pixel_values"],
                            qwen3_io["image_grid_thw"])
    steps = 6
    tokens, step_logits, cache = _greedy(params, config, inputs, steps)
    b, length = inputs["input_ids"].shape
    next_position = inputs["positions"].max(axis=(0, 2)) + 1
    full = dict(model_inputs(inputs))
    full["input_ids"] = np.concatenate([inputs["input_ids"], tokens], axis=1)
    full["attention_mask"] = np.concatenate([inputs["attention_mask"], np.ones((b, steps), np.int32)], axis=1)
    full["image_mask"] = np.concatenate([inputs["input_ids"] == config.image_token_id, np.zeros((b, steps), bool)],
                                        axis=1)
    extra = next_position[:, None] + np.arange(steps)[None]
    full["positions"] = np.concatenate([inputs["positions"], np.broadcast_to(extra[None], (3, b, steps))], axis=2)
    logits, _ = Qwen3VL(config).apply({"params": params}, **full)
    # decode step k fed token k (k = 0 .. steps-2) at position length + k.
    expected = np.asarray(logits)[:, length: length + steps - 1]
    np.testing.assert_allclose(step_logits, expected, atol=1e-4, rtol=0)
    assert int(cache.length) == length + steps - 1


def test_decode_masses_have_one_query_row(qwen3_loaded, qwen3_io):
    config, params = qwen3_loaded
    inputs = prepare_inputs(config, qwen3_io["input_ids"], qwen3_io["attention_mask"], qwen3_io["pixel_values"],
                            qwen3_io["image_grid_thw"])
    _, cache, _ = prefill(params, config, inputs, inputs["input_ids"].shape[1] + 2)
    region = np.zeros(cache.valid.shape, bool)
    region[:, :5] = True
    _, _, aux = decode_step(params, config, jnp.array([11, 12]), cache, region_mask=region,
                            visual_scale=jnp.full((2, 1), 1.5), return_attention_mass=(1,))
    masses = aux["attention_mass"][1]
    assert masses["visual"].shape == (2, config.text.num_heads, 1)
    assert float(masses["visual"].min()) > 0.0


def test_per_layer_cache_decodes_as_the_stacked_cache(qwen3_loaded, qwen3_io):
    """`KVCache.per_layer` (the sampler loop's form) gives the stacked cache's logits and contents."""
    config, params = qwen3_loaded
    inputs = prepare_inputs(config, qwen3_io["input_ids"], qwen3_io["attention_mask"], qwen3_io["pixel_values"],
                            qwen3_io["image_grid_thw"])
    logits, cache, _ = prefill(params, config, inputs, inputs["input_ids"].shape[1] + 4)
    step = jax.jit(lambda p, t, c: decode_step(p, config, t, c))
    (stacked_logits, stacked), (layer_logits, layers) = decode_both_forms(params, logits[:, -1], cache, 4, step)
    assert isinstance(layers.keys, tuple) and len(layers.keys) == config.text.num_layers
    np.testing.assert_allclose(layer_logits, stacked_logits, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.stack(layers.keys), stacked.keys, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.stack(layers.values), stacked.values, atol=1e-6, rtol=0)
