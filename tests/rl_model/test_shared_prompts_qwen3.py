"""Qwen3-VL: prompt work shared by the G rows of a group vs the same passes over the repeated rows (fp32).

The oracle is the unshared path (group_size=1 / share_prompts=False), itself tested against HF
(tests/model/qwen3_vl/test_hf_parity.py). DeepStack adds vision features to the prompt's image
positions only, so the completions after the prompt's copied keys/values must equal the full
forward's completion positions; these tests check that rather than assume it."""

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
from sif_jax.infer.scoring import score, score_inputs
from sif_jax.model import family
from sif_jax.model.layout import stack_layers
from sif_jax.model.qwen3_vl.model import Qwen3VL
from tests.rl_model.shared_checks import (
    assert_shared_loss_gradient_equals_full,
    assert_shared_scores_equal_full,
)

G = 3
PROMPT_LEN = 128
PATCHES = 64  # per image row: 16 image features (merge_unit 4)


@pytest.fixture(scope="module")
def setup():
    """qwen3_vl_tiny (4 decoder layers, DeepStack after layers 0 and 1) on 96 x 96 px images (6 x 6
    patches of 16 px, 9 image tokens), two prompts, each repeated G times."""
    config = family.get_preset("qwen3_vl_tiny")
    assert config.vision.deepstack_visual_indexes  # DeepStack is on
    fam = family.family_of(config)
    pre = pl.Preprocessor(BuiltinTokenizer(), config, pl.PreprocessConfig(min_pixels=64 * 64, max_pixels=96 * 96))
    source = pl.BuiltinSource(seed=0, size=4, scene_config=SceneConfig(height=112, width=112))
    examples = [pre(source[i]) for i in range(2)]
    kw = dict(length_buckets=(PROMPT_LEN,), patch_buckets=(PATCHES,))
    batch = pl.collate(examples, config, repeat=G, **kw)
    single = pl.collate(examples, config, repeat=1, **kw)
    params = fam.init_params(config, jax.random.key(0))
    return config, fam, params, batch, single


def _device(fam, inputs):
    return {k: jnp.asarray(v) for k, v in fam.model_inputs(inputs).items()}


def _completion(batch, config, steps=6, seed=0):
    """Random completions (one holding the image token id, which stays text) and ragged masks."""
    rng = np.random.default_rng(seed)
    rows = batch.inputs.input_ids.shape[0]
    completion = rng.integers(10, 800, (rows, steps))
    completion[1, 2] = config.image_token_id
    lengths = rng.integers(1, steps + 1, rows)
    mask = jnp.asarray(np.arange(steps)[None] < lengths[:, None])
    return jnp.asarray(completion, jnp.int32), mask


def test_qwen3_vl_shares_prompts(setup):
    assert shares_prompts(setup[0])


def test_unique_prompts_equal_the_unrepeated_batch(setup):
    config, fam, _, batch, single = setup
    assert np.shape(batch.inputs.pixel_values) == (2 * G, PATCHES, 1536)
    got = unique_prompts(batch.inputs, G, config)
    want = fam.model_inputs(single.inputs)
    assert set(got) == set(want)
    assert {"pos_indices", "pos_weights", "patch_positions", "frame_segments", "image_token_index"} <= set(got)
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


def test_unique_prompts_refuse_layouts_they_cannot_split(setup):
    config, fam, _, batch, _ = setup
    inputs = dict(fam.model_inputs(batch.inputs))
    flat = {k: v for k, v in inputs.items() if k != "image_token_index"}
    flat["pixel_values"] = inputs["pixel_values"].reshape(-1, 1536)
    with pytest.raises(ValueError, match=r"needs the batched-image layout"):
        unique_prompts(flat, G, config)
    with pytest.raises(ValueError, match="5 images do not split evenly over 6 rows"):
        unique_prompts(dict(inputs, pixel_values=inputs["pixel_values"][:5]), G, config)
    ids = np.array(inputs["input_ids"])
    ids[4, -1] += 1
    with pytest.raises(ValueError, match="rows of group 1"):
        unique_prompts(dict(inputs, input_ids=ids), G, config)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_extend_after_the_prompt_equals_the_full_forward(setup, scan_layers):
    config, fam, params, batch, _ = setup
    if scan_layers:
        config = config.replace(scan_layers=True)
        params = stack_layers(params, config)
    prompt = _device(fam, batch.inputs)
    completion, mask = _completion(batch, config)
    full = score_inputs(prompt, completion, mask, image_token_id=config.image_token_id, config=config)
    assert full["positions"].shape == (3, 6, PROMPT_LEN + 6)
    region = jnp.asarray(np.random.default_rng(3).random(full["input_ids"].shape) < 0.3)
    model = Qwen3VL(config)
    want, want_aux = model.apply({"params": params}, **full, region_mask=region, return_attention_mass=(0, 3))
    _, hidden_aux = model.apply({"params": params}, **full, return_hidden=True)
    _, aux = model.apply({"params": params}, **prompt, return_kv=True)
    extend = functools.partial(model.apply, {"params": params}, completion, full["positions"][:, :, PROMPT_LEN:],
                               aux["kv"], full["attention_mask"].astype(bool), full["image_mask"],
                               method=Qwen3VL.extend)
    got, got_aux = extend(region_mask=region, return_attention_mass=(0, 3))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want[:, PROMPT_LEN:]), atol=1e-5)
    _, got_hidden = extend(return_hidden=True)
    np.testing.assert_allclose(np.asarray(got_hidden["hidden"]),
                               np.asarray(hidden_aux["hidden"][:, PROMPT_LEN:]), atol=1e-5)
    for layer in (0, 3):
        for name in ("region", "visual"):
            np.testing.assert_allclose(np.asarray(got_aux["attention_mass"][layer][name]),
                                       np.asarray(want_aux["attention_mass"][layer][name][..., PROMPT_LEN:]),
                                       atol=1e-5, err_msg=f"{layer} {name}")


def test_the_completion_pass_needs_the_prompts_deepstack(setup):
    """The check above is not vacuous: a prompt pass without DeepStack gives other completion logits."""
    config, fam, params, batch, _ = setup
    prompt = _device(fam, batch.inputs)
    completion, mask = _completion(batch, config)
    full = score_inputs(prompt, completion, mask, image_token_id=config.image_token_id, config=config)
    model = Qwen3VL(config)
    want, _ = model.apply({"params": params}, **full)
    embeddings, deepstack = model.apply({"params": params}, *[prompt.get(k) for k in (
        "input_ids", "pixel_values", "patch_positions", "frame_segments", "pos_indices", "pos_weights",
        "image_token_index")], method=Qwen3VL.embed)
    assert deepstack is not None and float(jnp.abs(deepstack).sum()) > 0
    _, aux = model.apply({"params": params}, embeddings, prompt["positions"],
                         kv_valid=prompt["attention_mask"].astype(bool), return_kv=True,
                         method=lambda m, *a, **k: m.text(*a, **k))
    got, _ = model.apply({"params": params}, completion, full["positions"][:, :, PROMPT_LEN:], aux["kv"],
                         full["attention_mask"].astype(bool), full["image_mask"], method=Qwen3VL.extend)
    assert np.abs(np.asarray(got) - np.asarray(want[:, PROMPT_LEN:])).max() > 1e-3


def test_prefix_kv_refuses_cache_kv_and_deepstack(setup):
    config, _, params, _, _ = setup
    c = config.text
    x = jnp.zeros((1, 2, c.hidden_size))
    pos = jnp.zeros((3, 1, 2), jnp.int32)
    kv = (jnp.zeros((c.num_layers, 1, 3, c.num_kv_heads, c.head_dim)),) * 2
    text = functools.partial(Qwen3VL(config).apply, {"params": params}, method=lambda m, *a, **k: m.text(*a, **k))
    with pytest.raises(ValueError, match="prefix_kv and cache_kv are exclusive"):
        text(x, pos, kv_valid=jnp.ones((1, 5), bool), prefix_kv=kv, cache_kv=kv, cache_index=jnp.int32(0))
    with pytest.raises(ValueError, match="takes no deepstack"):
        text(x, pos, kv_valid=jnp.ones((1, 5), bool), prefix_kv=kv, deepstack=jnp.zeros((2, 1, 2, c.hidden_size)))


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


@pytest.mark.parametrize("scan_layers", [False, True])
def test_scoring_with_a_shared_prefix_equals_the_full_pass(setup, scan_layers):
    config, fam, params, batch, _ = setup
    if scan_layers:
        config = config.replace(scan_layers=True)
        params = stack_layers(params, config)
    completion, mask = _completion(batch, config)
    run = functools.partial(score, params, _device(fam, batch.inputs), completion, mask,
                            jnp.asarray(batch.region_mask), config=config, mass_layers=(0, 3), temperature=0.7,
                            vocab_chunk=256)
    assert_shared_scores_equal_full(run, G)


def test_loss_gradient_through_the_shared_prompt_equals_the_full_pass(setup):
    config, fam, params, batch, _ = setup
    prompt = _device(fam, batch.inputs)
    completion, mask = _completion(batch, config, seed=1)
    leaves = assert_shared_loss_gradient_equals_full(params, prompt, completion, mask, config=config, group_size=G)
    norms = {"visual": 0.0, "deepstack": 0.0}
    for name, a in leaves:
        if "'visual'" in name:
            norms["visual"] += float(jnp.sum(a * a))
            if "deepstack" in name:
                norms["deepstack"] += float(jnp.sum(a * a))
    # the gradient reaches the vision tower through the prompt, DeepStack's mergers included
    assert norms["visual"] > 0 and norms["deepstack"] > 0, norms


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
