"""Sampler and scoring pass against the model's full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.infer.lm_head import chunked_token_stats
from sif_jax.infer.sampler import SamplingConfig, generate, process_logits
from sif_jax.infer.scoring import score
from sif_jax.model.vlm import forward, prepare_inputs


@pytest.fixture(scope="module")
def setup(hf_tiny_dir, hf_tiny_io):
    config, params = load_hf_checkpoint(hf_tiny_dir)
    prompt = prepare_inputs(config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                            hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
    prompt = {k: jnp.asarray(v) for k, v in prompt.items()}
    return config, params, prompt


def test_temperature_zero_is_greedy_argmax_of_the_full_forward(setup, hf_tiny_io):
    config, params, prompt = setup
    steps = 8
    samples = generate(params, prompt, jax.random.key(0), config=config,
                       sampling=SamplingConfig(max_new_tokens=steps, temperature=0.0),
                       eos_token_id=config.eos_token_id, pad_token_id=0)
    ids, mask = hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"]
    for _ in range(steps):  # greedy by repeated full forwards, no cache
        logits, _ = forward(params, config, ids, mask, hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
        nxt = np.argmax(np.asarray(logits)[:, -1], axis=-1)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones_like(nxt[:, None])], axis=1)
    np.testing.assert_array_equal(np.asarray(samples.tokens), ids[:, -steps:])
    assert np.asarray(samples.completion_mask).all()  # this fixture's eos (294) never comes first


def test_eos_stops_a_row_and_pads_after_it(setup):
    config, params, prompt = setup
    greedy = generate(params, prompt, jax.random.key(0), config=config,
                      sampling=SamplingConfig(max_new_tokens=6, temperature=0.0),
                      eos_token_id=config.eos_token_id, pad_token_id=0)
    eos = int(greedy.tokens[0, 2])  # pretend row 0's third token is EOS
    stopped = generate(params, prompt, jax.random.key(0), config=config,
                       sampling=SamplingConfig(max_new_tokens=6, temperature=0.0),
                       eos_token_id=eos, pad_token_id=0)
    row = np.asarray(stopped.tokens[0])
    first = int(np.flatnonzero(row == eos)[0])
    assert np.asarray(stopped.completion_mask[0]).tolist() == [i <= first for i in range(6)]
    assert (row[first + 1:] == 0).all()


def test_top_k_and_top_p_filtering():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept_k = process_logits(logits, SamplingConfig(top_k=2)) > -1e29
    assert kept_k.tolist() == [[True, True, False, False]]
    kept_p = process_logits(logits, SamplingConfig(top_p=0.7)) > -1e29
    assert kept_p.tolist() == [[True, True, False, False]]  # 0.5 < 0.7, 0.8 >= 0.7 stops after
    samples = jax.vmap(lambda k: jax.random.categorical(k, process_logits(logits, SamplingConfig(top_p=0.7))))(
        jax.random.split(jax.random.key(0), 2000))
    assert set(np.unique(np.asarray(samples)).tolist()) <= {0, 1}


def test_chunked_stats_match_dense_log_softmax():
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((2, 5, 8)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((8, 37)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 37, (2, 5)))
    logp, ent = chunked_token_stats(hidden, kernel, targets, temperature=0.7, chunk=10)
    dense = jax.nn.log_softmax(hidden @ kernel / 0.7, axis=-1)
    np.testing.assert_allclose(logp, jnp.take_along_axis(dense, targets[..., None], -1)[..., 0], atol=1e-5)
    np.testing.assert_allclose(ent, -jnp.sum(jnp.exp(dense) * dense, -1), atol=1e-5)


def test_score_matches_full_forward_and_reports_masses(setup, hf_tiny_io):
    config, params, prompt = setup
    rng = np.random.default_rng(1)
    completion = jnp.asarray(rng.integers(10, 280, (2, 5)), jnp.int32)
    completion_mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    visual = np.asarray(prompt["input_ids"]) == config.image_token_id
    region = visual.copy()
    region[:, : visual.shape[1] - 12] = False  # the last few image tokens form the "region"
    scores = score(params, prompt, completion, completion_mask, jnp.asarray(region), config=config,
                   mass_layers=(0, 2), vocab_chunk=64)
    ids = np.concatenate([hf_tiny_io["input_ids"], np.asarray(completion)], axis=1)
    mask = np.concatenate([hf_tiny_io["attention_mask"], np.asarray(completion_mask)], axis=1)
    logits, aux = forward(params, config, ids, mask, hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"],
                          region_mask=jnp.asarray(np.concatenate([region, np.zeros((2, 5), bool)], 1)),
                          return_attention_mass=(0, 2))
    L = hf_tiny_io["input_ids"].shape[1]
    logp = jax.nn.log_softmax(np.asarray(logits)[:, L - 1:-1], -1)
    expected = np.take_along_axis(np.asarray(logp), np.asarray(completion)[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(scores.logprobs), expected * np.asarray(completion_mask), atol=1e-5)
    expected_region = np.mean([np.asarray(aux["attention_mass"][i]["region"]) for i in (0, 2)], axis=(0, 2))[:, L:]
    np.testing.assert_allclose(np.asarray(scores.region_mass), expected_region * np.asarray(completion_mask),
                               atol=1e-6)
    assert (np.asarray(scores.region_mass) <= np.asarray(scores.visual_mass) + 1e-6).all()
    assert (np.asarray(scores.entropies)[~np.asarray(completion_mask)] == 0).all()


def test_score_is_differentiable(setup):
    config, params, prompt = setup
    completion = jnp.full((2, 3), 20, jnp.int32)
    mask = jnp.ones((2, 3), bool)
    grads = jax.grad(lambda p: score(p, prompt, completion, mask, config=config).logprobs.sum())(params)
    norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(norms) > 0


def test_frozen_vision_tower_does_not_move():
    from sif_jax.model.config import get_preset
    from sif_jax.model.vlm import init_params
    from sif_jax.optim import make_optimizer

    params = init_params(get_preset("tiny"), jax.random.key(0))
    tx = make_optimizer(1e-2, weight_decay=0.1, freeze_vision=True)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates["visual"]))
    assert all(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(updates["text"]))


def test_adaptvis_picks_alpha_by_confidence_and_changes_decoding(setup):
    from sif_jax.infer.adaptvis import AdaptVisConfig, choose_alpha, generate_adaptvis

    assert choose_alpha(jnp.array([0.1, 0.39, 0.4, 0.9]), AdaptVisConfig()).tolist() == [0.5, 0.5, 1.5, 1.5]
    config, params, prompt = setup
    sampling = SamplingConfig(max_new_tokens=4, temperature=0.0)
    plain = generate(params, prompt, jax.random.key(0), config=config, sampling=sampling, eos_token_id=-1,
                     pad_token_id=0)
    # threshold above every confidence: alpha_1 everywhere; with alpha_1 = 1 decoding is unchanged
    same = generate_adaptvis(params, prompt, jax.random.key(0), config=config, sampling=sampling,
                             adaptvis=AdaptVisConfig(alpha_low=1.0, threshold=0.999), eos_token_id=-1,
                             pad_token_id=0)
    assert np.asarray(same.alpha).tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(np.asarray(same.samples.tokens), np.asarray(plain.tokens))
    # a strong sharpening changes the first-step distribution of the last prompt row
    sharp = generate(params, prompt, jax.random.key(0), config=config, sampling=sampling, eos_token_id=-1,
                     pad_token_id=0, visual_scale=jnp.full((2,), 8.0))
    assert not np.allclose(np.asarray(sharp.first_token_prob), np.asarray(plain.first_token_prob))
