"""Top-k / top-p on a candidate set vs the full-vocabulary sort (`process_logits`)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.infer.sampler import (
    NEG_INF,
    SamplingConfig,
    ban_tokens,
    candidate_logits,
    categorical,
    first_argmax,
    nucleus_logits,
    process_logits,
    sample_token,
)

VOCAB = 2000


def scatter(processed, ids, vocab):
    """[N, C] candidate logits at their ids -> [N, V], -1e30 elsewhere."""
    full = jnp.full((processed.shape[0], vocab), NEG_INF, jnp.float32)
    return full.at[jnp.arange(processed.shape[0])[:, None], ids].set(processed)


def random_logits(rng, rows, scale):
    logits = rng.standard_normal((rows, VOCAB)).astype(np.float32) * scale
    return jnp.asarray(logits)


@pytest.mark.parametrize("seed", range(6))
def test_candidates_equal_the_full_sort_whenever_they_fit(seed):
    rng = np.random.default_rng(seed)
    fitted = 0
    for _ in range(8):
        sampling = SamplingConfig(temperature=float(rng.choice([0.0, 0.3, 0.7, 1.0, 1.5])),
                                  top_p=float(rng.choice([rng.uniform(0.05, 0.99), 1.0])),
                                  top_k=int(rng.choice([0, 0, 5, 50, 300])),
                                  candidates=int(rng.choice([64, 256])))
        logits = random_logits(rng, 16, float(rng.choice([1.0, 3.0, 8.0])))
        if rng.random() < 0.3:  # coarse values: many ties, as bf16 logits have
            logits = jnp.round(logits * 2) / 2
        processed, ids, fits = candidate_logits(logits, sampling)
        reference = process_logits(logits, sampling)
        got = scatter(processed, ids, VOCAB)
        fits = np.asarray(fits)
        fitted += int(fits.sum())
        keep_ref, keep_got = np.asarray(reference) > -1e29, np.asarray(got) > -1e29
        np.testing.assert_array_equal(keep_got[fits], keep_ref[fits])
        np.testing.assert_allclose(np.asarray(jax.nn.log_softmax(got))[fits & keep_ref.any(1)][keep_ref[fits]],
                                   np.asarray(jax.nn.log_softmax(reference))[fits][keep_ref[fits]], atol=1e-5)
    assert fitted > 0


def test_a_nucleus_wider_than_the_candidates_does_not_fit_and_falls_back_to_the_full_sort():
    rng = np.random.default_rng(0)
    logits = random_logits(rng, 4, 0.1)  # nearly flat: the 0.95-nucleus holds ~1900 of 2000 tokens
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, candidates=64)
    _, _, fits = candidate_logits(logits, sampling)
    assert not np.asarray(fits).any()
    full = SamplingConfig(temperature=1.0, top_p=0.95, candidates=0)
    for i in range(5):
        key = jax.random.key(i)
        tok, logp = sample_token(logits, key, sampling)
        tok_ref, logp_ref = sample_token(logits, key, full)
        np.testing.assert_array_equal(tok, tok_ref)  # the same draw: the full-sort branch ran
        np.testing.assert_allclose(logp, logp_ref, rtol=1e-6)


def test_top_k_ties_past_the_candidates_do_not_fit():
    logits = jnp.zeros((2, VOCAB)).at[:, :3].set(5.0)  # 1997 tokens tied at the 4th place
    _, _, fits = candidate_logits(logits, SamplingConfig(top_k=4, top_p=0.999, candidates=64))
    assert not np.asarray(fits).any()


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_sampled_tokens_follow_the_full_sort_distribution(temperature):
    rng = np.random.default_rng(3)
    logits = random_logits(rng, 1, 3.0)
    sampling = SamplingConfig(temperature=temperature, top_p=0.8, candidates=128)
    assert bool(candidate_logits(logits, sampling)[2][0])
    keys = jax.random.split(jax.random.key(1), 4000)
    tokens, logps = jax.vmap(lambda k: sample_token(logits, k, sampling))(keys)
    reference = jax.nn.log_softmax(process_logits(logits, sampling))[0]
    np.testing.assert_allclose(logps[:, 0], reference[tokens[:, 0]], atol=1e-5)
    if temperature == 0:
        assert (np.asarray(tokens) == int(jnp.argmax(logits[0]))).all()
        return
    counts = np.bincount(np.asarray(tokens[:, 0]), minlength=VOCAB) / len(keys)
    probs = np.exp(np.asarray(reference))
    assert counts[probs == 0].sum() == 0
    assert np.abs(counts - probs).max() < 0.03


def test_banned_ids_are_never_candidates_that_get_drawn():
    rng = np.random.default_rng(4)
    logits = random_logits(rng, 8, 1.0).at[:, 7].set(50.0)
    banned = ban_tokens(logits, (7,))
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, candidates=64)
    for i in range(20):
        tok, _ = sample_token(banned, jax.random.key(i), sampling)
        assert (np.asarray(tok) != 7).all()


def test_candidates_must_be_non_negative():
    with pytest.raises(ValueError, match="candidates=-1"):
        SamplingConfig(candidates=-1)


@pytest.mark.parametrize("seed", range(4))
def test_the_sort_free_nucleus_keeps_what_the_full_sort_keeps(seed):
    """`nucleus_logits` (bisection, no sort) against `process_logits` (stable sort): the same kept
    set and values, with ties (coarse logits, -0.0 beside +0.0), banned ids and top-k."""
    rng = np.random.default_rng(seed)
    for _ in range(8):
        sampling = SamplingConfig(temperature=float(rng.choice([0.0, 0.5, 1.0])),
                                  top_p=float(rng.choice([rng.uniform(0.05, 0.99), 0.9, 1.0])),
                                  top_k=int(rng.choice([0, 0, 5, 300])), candidates=0)
        logits = random_logits(rng, 16, float(rng.choice([0.1, 1.0, 8.0])))
        if rng.random() < 0.5:
            logits = jnp.round(logits * 2) / 2  # many ties, and -0.0 beside +0.0
        logits = ban_tokens(logits, (3, 11))
        got, want = np.asarray(nucleus_logits(logits, sampling)), np.asarray(process_logits(logits, sampling))
        np.testing.assert_array_equal(got > -1e29, want > -1e29)
        np.testing.assert_array_equal(got[want > -1e29], want[want > -1e29])


def test_the_vocabulary_path_draws_from_the_nucleus():
    """Nearly flat logits: the 0.9-nucleus does not fit 64 candidates, the draw comes from the
    sort-free whole-vocabulary path and never leaves the nucleus."""
    rng = np.random.default_rng(5)
    logits = random_logits(rng, 1, 0.5)
    sampling = SamplingConfig(temperature=1.0, top_p=0.3, candidates=64)
    assert not bool(candidate_logits(logits, sampling)[2][0])
    keys = jax.random.split(jax.random.key(2), 2000)
    tokens, logps = jax.vmap(lambda k: sample_token(logits, k, sampling))(keys)
    reference = np.asarray(jax.nn.log_softmax(process_logits(logits, sampling))[0])
    drawn = reference[np.asarray(tokens[:, 0])]
    assert (drawn > -1e29).all()  # never outside the nucleus
    np.testing.assert_allclose(logps[:, 0], reference[tokens[:, 0]], atol=1e-5)


@pytest.mark.parametrize("ties,top_p", [(50, 0.1), (10, 0.3), (7, 0.5)])
def test_the_sort_free_nucleus_rounds_ties_as_the_sort_does(ties, top_p):
    """Tied tokens whose masses sum to top_p up to rounding (0.1 x 50 is exactly 5.0 in float32,
    while the sort's running sum of 0.02s stays below 0.1): both paths keep the same tokens."""
    logits = jnp.full((1, VOCAB), -jnp.inf).at[0, :ties].set(0.0)
    sampling = SamplingConfig(temperature=1.0, top_p=top_p, candidates=0)
    want = np.asarray(process_logits(logits, sampling)) > -1e29
    np.testing.assert_array_equal(np.asarray(nucleus_logits(logits, sampling)) > -1e29, want)
    processed, ids, fits = candidate_logits(logits, dataclasses.replace(sampling, candidates=64))
    assert bool(fits[0]) and int((np.asarray(processed) > -1e29).sum()) == int(want.sum())


def test_candidates_are_skipped_when_top_k_makes_them_a_quarter_of_the_vocabulary():
    """4 * max(candidates, top_k + 1) >= V: the draw is the whole-vocabulary one (same key, same token)."""
    rng = np.random.default_rng(6)
    logits = random_logits(rng, 4, 3.0)
    with_candidates = SamplingConfig(temperature=1.0, top_k=600, candidates=64)
    whole = dataclasses.replace(with_candidates, candidates=0)
    for i in range(3):
        np.testing.assert_array_equal(sample_token(logits, jax.random.key(i), with_candidates)[0],
                                      sample_token(logits, jax.random.key(i), whole)[0])


@pytest.mark.parametrize("vocab", [7, 1024, 65537])
def test_first_argmax_is_argmax_with_ties_and_masked_ids(vocab):
    """Below and above the vocabulary size where it switches to jnp.argmax: the lowest index
    among maxima, with ties, -inf / NEG_INF entries and a row that is all NEG_INF."""
    rng = np.random.default_rng(vocab)
    x = np.round(rng.standard_normal((6, vocab)), 1).astype(np.float32)  # many exact ties
    x[1, : vocab // 2] = -np.inf
    x[2] = NEG_INF
    x[3, -1] = 50.0
    x[4, [0, vocab - 1]] = 60.0
    np.testing.assert_array_equal(jax.jit(first_argmax)(x), np.argmax(x, axis=-1))


def test_categorical_draws_what_jax_random_categorical_draws():
    logits = jnp.asarray(random_logits(np.random.default_rng(3), 16, 3.0))
    keys = jax.random.split(jax.random.key(5), 64)
    ours = jax.vmap(lambda k: categorical(k, logits))(keys)
    theirs = jax.vmap(lambda k: jax.random.categorical(k, logits, axis=-1))(keys)
    np.testing.assert_array_equal(ours, theirs)
