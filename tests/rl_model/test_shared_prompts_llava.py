"""LLaVA-1.5: prompt work shared by the G rows of a group vs the same passes over the repeated rows (fp32).

The oracle is the unshared path (group_size=1 / share_prompts=False), itself tested against HF
(tests/model/llava/test_hf_parity.py)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.data import pipeline as pl
from sif_jax.data.scenes import SceneConfig
from sif_jax.data.tokenizer import BuiltinTokenizer
from sif_jax.infer.groups import shares_prompts, unique_prompts
from sif_jax.infer.sampler import SamplingConfig, generate
from sif_jax.infer.scoring import score
from sif_jax.model import family
from sif_jax.model.llava.config import llava_1_5_tiny
from sif_jax.model.llava.model import Llava
from tests.rl_model.shared_checks import (
    assert_shared_loss_gradient_equals_full,
    assert_shared_scores_equal_full,
)

G = 3


def tiny_config():
    """llava_1_5_tiny at 56 px (a 4 x 4 grid: 16 image tokens per prompt) and two decoder layers."""
    c = llava_1_5_tiny()
    return c.replace(vision=dataclasses.replace(c.vision, image_size=56),
                     text=dataclasses.replace(c.text, num_layers=2))


@pytest.fixture(scope="module")
def setup():
    config = tiny_config()
    fam = family.family_of(config)
    pre = pl.Preprocessor(BuiltinTokenizer(), config)
    source = pl.BuiltinSource(seed=0, size=4, scene_config=SceneConfig(height=112, width=112))
    examples = [pre(source[i]) for i in range(2)]
    batch = pl.collate(examples, config, repeat=G, length_buckets=(128,))
    single = pl.collate(examples, config, repeat=1, length_buckets=(128,))
    params = fam.init_params(config, jax.random.key(0))
    return config, fam, params, batch, single


def _device(fam, inputs):
    return {k: jnp.asarray(v) for k, v in fam.model_inputs(inputs).items()}


def _row_major_index(inputs, config):
    """int32 [N, L]: the feature row each image position takes without `image_token_index` (the k-th
    image position of the batch, row-major; 0 elsewhere)."""
    is_image = np.asarray(inputs.input_ids) == config.image_token_id
    return np.where(is_image, np.cumsum(is_image.reshape(-1)).reshape(is_image.shape) - 1, 0).astype(np.int32)


def test_llava_shares_prompts(setup):
    config = setup[0]
    assert shares_prompts(config) and shares_prompts(family.get_preset("tiny"))


def test_unique_prompts_equal_the_unrepeated_batch(setup):
    config, fam, _, batch, single = setup
    assert np.shape(batch.inputs.pixel_values) == (2 * G, 3, 56, 56)
    got = unique_prompts(batch.inputs, G, config)
    want = fam.model_inputs(single.inputs)
    assert set(got) == set(want) and "image_token_index" not in got
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


def test_unique_prompts_renumber_an_image_token_index(setup):
    config, fam, params, batch, single = setup
    repeated = dict(fam.model_inputs(batch.inputs), image_token_index=_row_major_index(batch.inputs, config))
    got = unique_prompts(repeated, G, config)
    want = _row_major_index(single.inputs, config)
    np.testing.assert_array_equal(np.asarray(got["image_token_index"]), want)
    # the explicit index selects the same features as the row-major order
    plain = dict(fam.model_inputs(single.inputs))
    embed = functools.partial(Llava(config).apply, {"params": params}, method=Llava.embed)
    a = embed(plain["input_ids"], plain["pixel_values"])
    b = embed(got["input_ids"], got["pixel_values"], got["image_token_index"])
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unique_prompts_refuse_layouts_they_cannot_split(setup):
    config, fam, _, batch, _ = setup
    inputs = dict(fam.model_inputs(batch.inputs))
    flat = dict(inputs, pixel_values=inputs["pixel_values"].reshape(-1, 56, 56))
    with pytest.raises(ValueError, match=r"LLaVA pixel_values must be \[images, 3, S, S\]"):
        unique_prompts(flat, G, config)
    with pytest.raises(ValueError, match="5 images do not split evenly over 6 rows"):
        unique_prompts(dict(inputs, pixel_values=inputs["pixel_values"][:5]), G, config)
    # the second prompt's image tokens turned to text: its rows hold no image positions, so the
    # row-major order would hand them the first prompt's features
    ids = np.array(inputs["input_ids"])
    ids[3:] = np.where(ids[3:] == config.image_token_id, 9, ids[3:])
    with pytest.raises(ValueError, match="row 3 holds 0 image positions; every row must hold 16"):
        unique_prompts(dict(inputs, input_ids=ids), G, config)
    with pytest.raises(ValueError, match=r"needs the batched-image layout"):
        qwen3 = family.get_preset("qwen3_vl_tiny")
        unique_prompts({"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
                        "positions": np.zeros((3, 6, 128), np.int32), "pixel_values": np.zeros((6, 4, 1536))},
                       G, qwen3)


@pytest.mark.parametrize("sampling", [SamplingConfig(max_new_tokens=8, temperature=0.7, top_p=0.9),
                                      SamplingConfig(max_new_tokens=8, temperature=0.0)])
def test_sampler_prefill_once_per_prompt_draws_the_same_samples(setup, sampling):
    config, fam, params, batch, _ = setup
    run = functools.partial(generate, params, _device(fam, batch.inputs), jax.random.key(5), config=config,
                            sampling=sampling, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    repeated, shared = run(group_size=1), run(group_size=G)
    np.testing.assert_array_equal(np.asarray(shared.tokens), np.asarray(repeated.tokens))
    np.testing.assert_array_equal(np.asarray(shared.completion_mask), np.asarray(repeated.completion_mask))
    np.testing.assert_allclose(np.asarray(shared.logprobs), np.asarray(repeated.logprobs), atol=1e-5)
    np.testing.assert_allclose(np.asarray(shared.step_max_prob), np.asarray(repeated.step_max_prob), atol=1e-6)


def _completion(batch, config, steps=6, seed=0):
    """Random completions (one holding the image token id, which stays text) and ragged masks."""
    rng = np.random.default_rng(seed)
    rows = batch.inputs.input_ids.shape[0]
    completion = rng.integers(10, 800, (rows, steps))
    completion[1, 2] = config.image_token_id
    lengths = rng.integers(1, steps + 1, rows)
    mask = jnp.asarray(np.arange(steps)[None] < lengths[:, None])
    return jnp.asarray(completion, jnp.int32), mask


def test_extend_after_the_prompt_equals_the_full_forward(setup):
    config, fam, params, batch, _ = setup
    from sif_jax.infer.scoring import score_inputs

    prompt = _device(fam, batch.inputs)
    completion, mask = _completion(batch, config)
    full = score_inputs(prompt, completion, mask, image_token_id=config.image_token_id, config=config)
    assert full["positions"].shape == (1, 6, 128 + 6) and full["image_mask"].shape == (6, 128 + 6)
    np.testing.assert_array_equal(np.asarray(full["positions"][0, :, 128:]),
                                  np.asarray(prompt["positions"][0, :, -1:]) + 1 + np.arange(6))
    model = Llava(config)
    want, _ = model.apply({"params": params}, **full)
    _, aux = model.apply({"params": params}, **prompt, return_kv=True)
    got, _ = model.apply({"params": params}, completion, full["positions"][:, :, 128:], aux["kv"],
                         full["attention_mask"].astype(bool), full["image_mask"], method=Llava.extend)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want[:, 128:]), atol=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_scoring_with_a_shared_prefix_equals_the_full_pass(setup, scan_layers):
    config, fam, params, batch, _ = setup
    if scan_layers:
        from sif_jax.model.layout import stack_layers

        config = config.replace(scan_layers=True)
        params = stack_layers(params, config)
    completion, mask = _completion(batch, config)
    run = functools.partial(score, params, _device(fam, batch.inputs), completion, mask,
                            jnp.asarray(batch.region_mask), config=config, mass_layers=(0, 1), temperature=0.7,
                            vocab_chunk=256)
    assert_shared_scores_equal_full(run, G)


def test_loss_gradient_through_the_shared_prompt_equals_the_full_pass(setup):
    config, fam, params, batch, _ = setup
    prompt = _device(fam, batch.inputs)
    completion, mask = _completion(batch, config, seed=1)
    leaves = assert_shared_loss_gradient_equals_full(params, prompt, completion, mask, config=config, group_size=G)
    vision_norm = sum(float(jnp.sum(a * a)) for name, a in leaves if "vision_tower" in name)
    assert vision_norm > 0  # the gradient does reach the vision tower through the prompt


def test_the_shared_passes_run_each_prompt_once(setup):
    """XLA's cost analysis of the lowered programs: with G = 3 the prompt work (128 padded tokens and
    the vision tower, against 4-6 completion tokens) is about a third of the repeated rows'."""
    config, fam, params, batch, _ = setup
    prompt = _device(fam, batch.inputs)
    completion, mask = _completion(batch, config)

    def flops(fn, *args, **kw):
        return {g: fn.lower(*args, **kw, group_size=g).cost_analysis()["flops"] for g in (1, G)}

    scored = flops(score, params, prompt, completion, mask, config=config, vocab_chunk=256)
    sampled = flops(generate, params, prompt, jax.random.key(0), config=config,
                    sampling=SamplingConfig(max_new_tokens=4), eos_token_id=config.eos_token_id,
                    pad_token_id=config.pad_token_id)
    for name, f in (("score", scored), ("generate", sampled)):
        assert f[G] < 0.4 * f[1], (name, f)
