"""KV-cache decoding against the full forward and HF's greedy generation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.model.cache import decode_step, prefill
from sif_jax.model.vlm import forward, prepare_inputs
from tests.model.decoding import decode_both_forms

STEPS = 16


@pytest.fixture(scope="module")
def greedy_run(hf_tiny_dir, hf_tiny_io):
    """Prefill + 16 cached greedy steps; returns the tokens and the per-step logits."""
    config, params = load_hf_checkpoint(hf_tiny_dir)
    inputs = prepare_inputs(config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                            hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
    prompt_len = inputs["input_ids"].shape[1]
    run_prefill = jax.jit(functools.partial(prefill, config=config, max_length=prompt_len + STEPS))
    step = jax.jit(functools.partial(decode_step, config=config), donate_argnames="cache")
    logits, cache, _ = run_prefill(params, inputs=inputs)
    last = logits[:, -1]
    tokens, step_logits = [], []
    for _ in range(STEPS):
        token = jnp.argmax(last, axis=-1)
        tokens.append(token)
        last, cache, _ = step(params, tokens=token, cache=cache)
        step_logits.append(last)
    return config, params, np.stack(tokens, 1), np.stack(step_logits, 1), cache


def test_cached_decoding_matches_full_forward(greedy_run, hf_tiny_io):
    config, params, tokens, step_logits, cache = greedy_run
    ids = np.concatenate([hf_tiny_io["input_ids"], tokens], axis=1)
    mask = np.concatenate([hf_tiny_io["attention_mask"], np.ones_like(tokens)], axis=1)
    full, _ = forward(params, config, ids, mask, hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
    prompt_len = hf_tiny_io["input_ids"].shape[1]
    # step i consumed token i; its logits predict token i+1 = full logits at prompt_len + i.
    expected = np.asarray(full)[:, prompt_len:]
    err = np.abs(step_logits - expected).max()
    assert err <= 1e-4, f"max |cached - full| = {err}"
    assert int(cache.length) == prompt_len + STEPS


def test_greedy_tokens_match_hf_generate(greedy_run, hf_tiny_io):
    _, _, tokens, _, _ = greedy_run
    np.testing.assert_array_equal(tokens, hf_tiny_io["greedy_tokens"])


def test_prefill_rejects_a_cache_shorter_than_the_prompt(hf_tiny_dir, hf_tiny_io):
    config, params = load_hf_checkpoint(hf_tiny_dir)
    inputs = prepare_inputs(config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                            hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
    with pytest.raises(ValueError, match="max_length=4"):
        prefill(params, config, inputs, 4)


def test_per_layer_cache_decodes_as_the_stacked_cache(hf_tiny_dir, hf_tiny_io):
    """The form the sampler's loop carries (`KVCache.per_layer`, each layer's array written in place)
    gives the stacked cache's logits and contents, step by step, and keeps its form."""
    config, params = load_hf_checkpoint(hf_tiny_dir)
    inputs = prepare_inputs(config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                            hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
    logits, cache, _ = prefill(params, config, inputs, inputs["input_ids"].shape[1] + 6)
    step = jax.jit(functools.partial(decode_step, config=config))
    (stacked_logits, stacked), (layer_logits, layers) = decode_both_forms(
        params, logits[:, -1], cache, 6, lambda p, t, c: step(p, tokens=t, cache=c))
    assert isinstance(layers.keys, tuple) and len(layers.keys) == config.text.num_layers
    assert layers.max_length == stacked.max_length
    np.testing.assert_allclose(layer_logits, stacked_logits, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.stack(layers.keys), stacked.keys, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.stack(layers.values), stacked.values, atol=1e-6, rtol=0)
    assert int(layers.length) == int(stacked.length)
