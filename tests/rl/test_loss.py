"""grpo_loss against an independent NumPy re-derivation; KL, clipping, exact accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.rl.loss import grpo_loss, grpo_loss_terms

EPS_LOW, EPS_HIGH, BETA = 0.2, 0.28, 0.04


def _numpy_loss(logp, old, ref, adv, mask, reduction, eps_low=EPS_LOW, eps_high=EPS_HIGH, beta=BETA):
    total, seqs, toks = 0.0, 0, 0
    for i in range(logp.shape[0]):
        seq = 0.0
        n = 0
        for t in range(logp.shape[1]):
            if not mask[i, t]:
                continue
            rho = np.exp(float(logp[i, t]) - float(old[i, t]))
            unclipped = rho * adv[i]
            clipped = min(max(rho, 1 - eps_low), 1 + eps_high) * adv[i]
            d = float(ref[i, t]) - float(logp[i, t])
            tok = -min(unclipped, clipped) + beta * (np.exp(d) - d - 1)
            seq += tok
            n += 1
        if reduction == "sequence_mean" and n:
            total += seq / n
            seqs += 1
        elif reduction == "token_mean":
            total += seq
            toks += n
    return total / max(seqs if reduction == "sequence_mean" else toks, 1)


def _batch(seed=0, n=6, t=7):
    rng = np.random.default_rng(seed)
    logp = rng.normal(-2.0, 0.5, (n, t)).astype(np.float32)
    old = (logp + rng.normal(0, 0.3, (n, t))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.3, (n, t))).astype(np.float32)
    adv = rng.normal(0, 1, n).astype(np.float32)
    lengths = np.array([7, 3, 1, 5, 0, 6])[:n]
    mask = np.arange(t)[None] < lengths[:, None]
    logp[~mask] = -np.inf  # garbage in the padding must not leak into the loss
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("reduction", ["sequence_mean", "token_mean"])
def test_matches_numpy(reduction):
    logp, old, ref, adv, mask = _batch()
    f = jax.jit(grpo_loss, static_argnames=("eps_low", "eps_high", "beta", "reduction"))
    loss, metrics = f(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask),
                      eps_low=EPS_LOW, eps_high=EPS_HIGH, beta=BETA, reduction=reduction)
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), _numpy_loss(logp, old, ref, adv, mask, reduction), rtol=1e-5, atol=1e-6)
    m = mask
    rho = np.exp(np.where(m, logp, 0) - old)[m]
    assert float(metrics["ratio_mean"]) == pytest.approx(rho.mean(), rel=1e-5)
    d = (ref - np.where(m, logp, 0))[m]
    assert float(metrics["kl_mean"]) == pytest.approx((np.exp(d) - d - 1).mean(), rel=1e-5)


def test_kl_zero_when_policy_is_reference():
    logp, old, _, adv, mask = _batch(1)
    logp = np.where(mask, logp, 0.0)
    _, metrics = grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(logp), jnp.asarray(adv),
                           jnp.asarray(mask), beta=0.5)
    assert float(metrics["kl_mean"]) == 0.0


def test_beta_zero_allows_no_reference():
    logp, old, ref, adv, mask = _batch(2)
    a, _ = grpo_loss(jnp.asarray(logp), jnp.asarray(old), None, jnp.asarray(adv), jnp.asarray(mask), beta=0.0)
    b, _ = grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask),
                     beta=0.0)
    assert float(a) == float(b)
    with pytest.raises(ValueError):
        grpo_loss(jnp.asarray(logp), jnp.asarray(old), None, jnp.asarray(adv), jnp.asarray(mask), beta=0.1)


@pytest.mark.parametrize(
    "rho, adv, expected_obj, grad_flows, low, high",
    [
        (1.5, 1.0, 1.2, False, 0, 1),    # above 1+eps with A>0: clipped, no gradient
        (1.5, -1.0, -1.5, True, 0, 0),   # above 1+eps with A<0: pessimistic unclipped term
        (0.5, -1.0, -0.8, False, 1, 0),  # below 1-eps with A<0: clipped, no gradient
        (0.5, 1.0, 0.5, True, 0, 0),     # below 1-eps with A>0: unclipped
        (1.1, 1.0, 1.1, True, 0, 0),     # inside the trust region
    ],
)
def test_clipping(rho, adv, expected_obj, grad_flows, low, high):
    old = jnp.zeros((1, 1))
    logp = jnp.full((1, 1), np.log(rho), jnp.float32)
    args = (old, None, jnp.array([adv]), jnp.ones((1, 1), bool))

    def f(lp):
        return grpo_loss(lp, *args, eps_low=0.2, eps_high=0.2, beta=0.0)

    (loss, metrics), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(logp)
    assert float(loss) == pytest.approx(-expected_obj, rel=1e-5)
    assert (abs(float(grad[0, 0])) > 0) == grad_flows
    assert float(metrics["clip_low_fraction"]) == low and float(metrics["clip_high_fraction"]) == high


@pytest.mark.parametrize("reduction", ["sequence_mean", "token_mean"])
def test_gradient_accumulation_is_exact(reduction):
    logp, old, ref, adv, mask = _batch(3)
    logp = np.where(mask, logp, -5.0).astype(np.float32)
    kw = dict(eps_low=EPS_LOW, eps_high=EPS_HIGH, beta=BETA, reduction=reduction)

    def full(lp):
        return grpo_loss(lp, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask), **kw)[0]

    full_loss, full_grad = jax.jit(jax.value_and_grad(full))(jnp.asarray(logp))

    splits = [slice(0, 1), slice(1, 4), slice(4, 6)]  # uneven token counts (7 | 3+1+5 | 0+6)
    terms_fn = jax.jit(grpo_loss_terms, static_argnames=tuple(kw))
    terms = [terms_fn(jnp.asarray(logp[s]), jnp.asarray(old[s]), jnp.asarray(ref[s]), jnp.asarray(adv[s]),
                      jnp.asarray(mask[s]), **kw) for s in splits]
    num = sum(float(t[0]) for t in terms)
    den = sum(float(t[1]) for t in terms)
    assert num / den == pytest.approx(float(full_loss), rel=1e-6)

    grads = []
    for s in splits:
        def micro(lp, s=s):
            n, _, _ = grpo_loss_terms(lp, jnp.asarray(old[s]), jnp.asarray(ref[s]), jnp.asarray(adv[s]),
                                      jnp.asarray(mask[s]), **kw)
            return n / den  # the total denominator, known up front from the masks
        grads.append(jax.jit(jax.grad(micro))(jnp.asarray(logp[s])))
    np.testing.assert_allclose(np.concatenate(grads), np.asarray(full_grad), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(full_grad)[~mask], 0.0)


def test_old_logp_none_is_on_policy():
    logp, _, ref, adv, mask = _batch(4)
    logp = np.where(mask, logp, 0.0).astype(np.float32)
    a, _ = grpo_loss(jnp.asarray(logp), None, jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask))
    b, _ = grpo_loss(jnp.asarray(logp), jnp.asarray(logp), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask))
    assert float(a) == pytest.approx(float(b), rel=1e-6)
