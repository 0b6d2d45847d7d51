"""Completions are text: the scoring pass reads image positions from the prompt only, and the
sampler never emits a vision control id. Oracle: the KV-cache decode fed the same tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.infer.sampler import SamplingConfig, ban_tokens, generate, sample_token, vision_control_ids
from sif_jax.infer.scoring import score, score_inputs
from sif_jax.model.cache import decode_step, prefill
from sif_jax.model.vlm import Qwen25VL, prepare_inputs

LAYERS = (0, 2)


@pytest.fixture(scope="module")
def setup(hf_tiny_dir, hf_tiny_io):
    config, params = load_hf_checkpoint(hf_tiny_dir)
    prompt = prepare_inputs(config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                            hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
    prompt = {k: jnp.asarray(v) for k, v in prompt.items()}
    return config, params, prompt


def kv_cache_decode(params, config, prompt, completion, region):
    """Teacher-forced KV-cache decode of `completion` [N, T]: log-prob of each token [N, T] and
    the region / visual mass of its query row [N, T] (layers LAYERS, heads averaged)."""
    n, steps = completion.shape
    length = prompt["input_ids"].shape[1]
    logits, cache, _ = prefill(params, config, prompt, length + steps)
    logits = logits[:, -1]
    region_slots = jnp.concatenate([region, jnp.zeros((n, steps), bool)], axis=1)
    logps, region_mass, visual_mass = [], [], []
    for t in range(steps):
        token = completion[:, t]
        logps.append(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), token[:, None], -1)[:, 0])
        logits, cache, aux = decode_step(params, config, token, cache, region_mask=region_slots,
                                         return_attention_mass=LAYERS)
        masses = aux["attention_mass"]
        region_mass.append(np.mean([np.asarray(masses[i]["region"])[:, :, 0] for i in LAYERS], axis=(0, 2)))
        visual_mass.append(np.mean([np.asarray(masses[i]["visual"])[:, :, 0] for i in LAYERS], axis=(0, 2)))
    return np.stack(logps, 1), np.stack(region_mass, 1), np.stack(visual_mass, 1)


@pytest.mark.parametrize("forced", ["image", "vision_tags"])
def test_scoring_a_sampled_image_pad_equals_the_kv_cache_decode(setup, forced):
    config, params, prompt = setup
    greedy = generate(params, prompt, jax.random.key(0), config=config,
                      sampling=SamplingConfig(max_new_tokens=6, temperature=0.0), eos_token_id=-1, pad_token_id=0)
    completion = np.asarray(greedy.tokens).copy()
    completion[:, 2] = config.image_token_id  # as if the policy had sampled the image-pad id
    if forced == "vision_tags":
        completion[0, 1], completion[1, 4] = config.vision_start_token_id, config.image_token_id
        completion[0, 3] = config.vision_end_token_id
    completion = jnp.asarray(completion)
    mask = jnp.ones(completion.shape, bool)
    visual = np.asarray(prompt["input_ids"]) == config.image_token_id
    scores = score(params, prompt, completion, mask, jnp.asarray(visual), config=config, mass_layers=LAYERS,
                   vocab_chunk=64)
    logp, region_mass, visual_mass = kv_cache_decode(params, config, prompt, completion, jnp.asarray(visual))
    np.testing.assert_allclose(np.asarray(scores.logprobs), logp, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores.visual_mass), visual_mass, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores.region_mass), region_mass, atol=1e-5)
    # The region is every prompt image token: the visual mass counts those keys and nothing else
    # (a completion image-pad key counted as visual would make visual > region).
    np.testing.assert_allclose(np.asarray(scores.visual_mass), np.asarray(scores.region_mass), atol=1e-6)
    assert (np.asarray(scores.visual_mass) > 0).all()
    # Sensitivity: reading modality from the ids (the image pad as a vision feature and a visual
    # key) gives another next-token distribution; the scoring pass must not reproduce it.
    inputs = score_inputs(prompt, completion, mask, image_token_id=config.image_token_id)
    del inputs["image_mask"]
    by_ids, _ = Qwen25VL(config).apply({"params": params}, **inputs)
    length = prompt["input_ids"].shape[1]
    by_ids_logp = np.take_along_axis(np.asarray(jax.nn.log_softmax(by_ids[:, length - 1 : -1], -1)),
                                     np.asarray(completion)[..., None], -1)[..., 0]
    assert np.abs(by_ids_logp[:, 3:] - logp[:, 3:]).max() > 1e-3


def test_explicit_prompt_image_mask_is_used(setup):
    """A prompt's `image_mask` (host-built) is what scoring reads; equal to the ids' layout here."""
    config, params, prompt = setup
    completion = jnp.full((2, 3), config.image_token_id, jnp.int32)
    mask = jnp.ones((2, 3), bool)
    with_mask = dict(prompt, image_mask=jnp.asarray(prompt["input_ids"]) == config.image_token_id)
    a = score(params, prompt, completion, mask, config=config).logprobs
    b = score(params, with_mask, completion, mask, config=config).logprobs
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    logp, _, _ = kv_cache_decode(params, config, prompt, completion, jnp.zeros_like(prompt["input_ids"], bool))
    np.testing.assert_allclose(np.asarray(a), logp, atol=1e-5)


def test_vision_control_ids_come_from_the_config(setup):
    config, _, _ = setup
    assert vision_control_ids(config) == tuple(sorted({config.image_token_id, config.video_token_id,
                                                       config.vision_start_token_id, config.vision_end_token_id}))


def test_sample_token_never_draws_a_banned_id():
    logits = jnp.zeros((4, 10)).at[:, 7].set(50.0).at[:, 3].set(49.0)  # 7 and 3 dominate
    banned = ban_tokens(logits, (3, 7))
    greedy, _ = sample_token(banned, jax.random.key(0), SamplingConfig(temperature=0.0))
    assert set(np.asarray(greedy).tolist()) <= set(range(10)) - {3, 7}
    draws = jax.vmap(lambda k: sample_token(banned, k, SamplingConfig(temperature=1.0, top_p=0.9))[0])(
        jax.random.split(jax.random.key(1), 500))
    assert not np.isin(np.asarray(draws), [3, 7]).any()


@pytest.mark.parametrize("sampling", [SamplingConfig(max_new_tokens=8, temperature=0.0),
                                      SamplingConfig(max_new_tokens=8, temperature=1.0),
                                      SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=0.5, top_k=5)])
def test_generate_never_emits_vision_ids_even_when_the_logits_favour_them(setup, sampling):
    config, params, prompt = setup
    kernel = jnp.asarray(params["text"]["lm_head"]["kernel"])
    u = jnp.asarray(np.random.default_rng(0).standard_normal(kernel.shape[0]), kernel.dtype)
    # +u on the image pad, -u on the video pad: whatever the hidden state, one of them has the top logit
    biased_kernel = kernel.at[:, config.image_token_id].set(1e3 * u).at[:, config.video_token_id].set(-1e3 * u)
    biased = jax.tree.map(lambda x: x, params)
    biased["text"]["lm_head"]["kernel"] = biased_kernel
    logits, _, _ = prefill(biased, config, prompt, prompt["input_ids"].shape[1] + 1)
    assert set(np.argmax(np.asarray(logits[:, -1]), -1).tolist()) <= {config.image_token_id, config.video_token_id}
    samples = generate(biased, prompt, jax.random.key(3), config=config, sampling=sampling, eos_token_id=-1,
                       pad_token_id=0)
    tokens = np.asarray(samples.tokens)[np.asarray(samples.completion_mask)]
    assert tokens.size == 16 and not np.isin(tokens, vision_control_ids(config)).any()
    assert np.isfinite(np.asarray(samples.logprobs)).all()
