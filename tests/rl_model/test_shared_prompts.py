"""Prompt work shared by the G rows of a group vs the same passes over the repeated rows (fp32)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.data import pipeline as pl
from sif_jax.data.scenes import SceneConfig
from sif_jax.data.tokenizer import BuiltinTokenizer
from sif_jax.infer.groups import check_groups, unique_prompts
from sif_jax.infer.sampler import SamplingConfig, generate
from sif_jax.infer.scoring import score
from sif_jax.model.config import get_preset
from sif_jax.model.vlm import init_params, model_inputs
from tests.rl_model.shared_checks import assert_shared_loss_gradient_equals_full, assert_shared_scores_equal_full

G = 3


@pytest.fixture(scope="module")
def setup():
    config = get_preset("tiny")
    pre = pl.Preprocessor(BuiltinTokenizer(), config)
    source = pl.BuiltinSource(seed=0, size=4, scene_config=SceneConfig(height=112, width=112))
    examples = [pre(source[i]) for i in range(2)]
    kw = dict(length_buckets=(128,), patch_buckets=(64,))
    batch = pl.collate(examples, config, repeat=G, **kw)
    single = pl.collate(examples, config, repeat=1, **kw)
    params = init_params(config, jax.random.key(0))
    return config, params, batch, single


def test_unique_prompts_equal_the_unrepeated_batch(setup):
    config, _, batch, single = setup
    got = unique_prompts(batch.inputs, G, config)
    want = model_inputs(single.inputs)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


def test_groups_must_hold_copies(setup):
    config, _, batch, _ = setup
    with pytest.raises(ValueError, match="does not divide the batch of 6 rows"):
        check_groups(batch.inputs.input_ids, 4)
    mixed = np.asarray(batch.inputs.input_ids)[[0, 1, 3, 2, 4, 5]]
    with pytest.raises(ValueError, match="rows of group 0"):
        check_groups(mixed, G)


@pytest.mark.parametrize("sampling", [SamplingConfig(max_new_tokens=8, temperature=0.7, top_p=0.9),
                                      SamplingConfig(max_new_tokens=8, temperature=0.0)])
def test_sampler_prefill_once_per_prompt_draws_the_same_samples(setup, sampling):
    config, params, batch, _ = setup
    prompt = {k: jnp.asarray(v) for k, v in model_inputs(batch.inputs).items()}
    run = functools.partial(generate, params, prompt, jax.random.key(5), config=config, sampling=sampling,
                            eos_token_id=config.eos_token_id, pad_token_id=0)
    repeated, shared = run(group_size=1), run(group_size=G)
    np.testing.assert_array_equal(np.asarray(shared.tokens), np.asarray(repeated.tokens))
    np.testing.assert_array_equal(np.asarray(shared.completion_mask), np.asarray(repeated.completion_mask))
    np.testing.assert_allclose(np.asarray(shared.logprobs), np.asarray(repeated.logprobs), atol=1e-5)
    np.testing.assert_allclose(np.asarray(shared.step_max_prob), np.asarray(repeated.step_max_prob), atol=1e-6)


def _completion(batch, steps=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = batch.inputs.input_ids.shape[0]
    completion = jnp.asarray(rng.integers(10, 800, (rows, steps)), jnp.int32)
    lengths = rng.integers(1, steps + 1, rows)
    mask = jnp.asarray(np.arange(steps)[None] < lengths[:, None])
    return completion, mask


@pytest.mark.parametrize("scan_layers", [False, True])
def test_scoring_with_a_shared_prefix_equals_the_full_pass(setup, scan_layers):
    config, params, batch, _ = setup
    if scan_layers:
        from sif_jax.model.layout import stack_layers

        config = config.replace(scan_layers=True)
        params = stack_layers(params, config)
    prompt = {k: jnp.asarray(v) for k, v in model_inputs(batch.inputs).items()}
    completion, mask = _completion(batch)
    run = functools.partial(score, params, prompt, completion, mask, jnp.asarray(batch.region_mask), config=config,
                            mass_layers=(0, 1), temperature=0.7, vocab_chunk=256)
    assert_shared_scores_equal_full(run, G)


def test_loss_gradient_through_the_shared_prompt_equals_the_full_pass(setup):
    config, params, batch, _ = setup
    prompt = {k: jnp.asarray(v) for k, v in model_inputs(batch.inputs).items()}
    completion, mask = _completion(batch, seed=1)
    leaves = assert_shared_loss_gradient_equals_full(params, prompt, completion, mask, config=config, group_size=G)
    vision_norm = sum(float(jnp.sum(a * a)) for name, a in leaves if "visual" in name)
    assert vision_norm > 0  # the gradient does reach the vision tower through the prompt


def test_visual_scale_needs_unshared_prompts(setup):
    config, params, batch, _ = setup
    prompt = {k: jnp.asarray(v) for k, v in model_inputs(batch.inputs).items()}
    with pytest.raises(ValueError, match="visual_scale needs group_size=1"):
        generate(params, prompt, jax.random.key(0), config=config, sampling=SamplingConfig(max_new_tokens=2),
                 eos_token_id=config.eos_token_id, pad_token_id=0, visual_scale=jnp.ones((6,)), group_size=G)
