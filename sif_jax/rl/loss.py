"""GRPO loss: clipped policy ratio + k3 KL to the reference (METHODS §4).

Per token t of sample i (A_i its advantage)::

    rho     = exp(logp - old_logp)
    surr    = min(rho * A_i, clip(rho, 1 - eps_low, 1 + eps_high) * A_i)
    k3      = exp(ref - logp) - (ref - logp) - 1              (>= 0, = 0 iff ref == logp)
    loss_t  = -surr + beta * k3

`grpo_loss_terms` returns a (numerator, denominator) pair so that gradient accumulation is exact:
sum the numerators and the denominators of all micro-batches and divide once.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

Reduction = Literal["sequence_mean", "token_mean"]
REDUCTIONS: tuple[str, ...] = ("sequence_mean", "token_mean")


def per_token_loss(
    logp: jax.Array,
    old_logp: jax.Array | None,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.04,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The per-token GRPO loss, zero at masked positions.

    Args:
      logp: float [N, T] log-prob of each sampled token under the policy being trained.
      old_logp: float [N, T] under the policy that sampled, or None for a single update per
        rollout (then old = stop_gradient(logp), rho = 1 with the right gradient).
      ref_logp: float [N, T] under the reference policy; may be None when beta == 0 (a Python
        number). With beta == 0 and a reference given, the KL is still reported, not added.
      eps_low, eps_high: clip range [1 - eps_low, 1 + eps_high] (Python floats; DAPO-style
        asymmetric clipping when they differ). beta: KL weight (Python float or traced scalar).
      advantages: float [N].
      mask: bool/float [N, T], true on real completion tokens.

    Returns:
      loss: float32 [N, T] (0 where mask is false).
      parts: float32 [N, T] per-token "kl", "ratio", "clip_low", "clip_high" (masked, 0 elsewhere).
    """
    m = mask.astype(bool)
    # Padded positions may hold garbage (-inf log-probs); zero them before exp so neither the
    # value nor the gradient (where() passes NaN gradients through) is poisoned.
    logp = jnp.where(m, logp.astype(jnp.float32), 0.0)
    old = jax.lax.stop_gradient(logp) if old_logp is None else jnp.where(m, old_logp.astype(jnp.float32), 0.0)
    adv = advantages.astype(jnp.float32)[:, None]

    ratio = jnp.exp(logp - old)
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    surrogate = jnp.minimum(ratio * adv, clipped * adv)
    loss = -surrogate
    # beta may be a traced scalar; only a Python 0 lets us skip the KL (and the reference pass).
    beta_is_zero = isinstance(beta, int | float) and beta == 0
    if ref_logp is None:
        if not beta_is_zero:
            raise ValueError("ref_logp is required unless beta == 0")
        kl = jnp.zeros_like(loss)
    else:
        diff = jnp.where(m, ref_logp.astype(jnp.float32), 0.0) - logp
        kl = jnp.exp(diff) - diff - 1.0  # k3: unbiased, >= 0, exactly 0 where ref == logp
        if not beta_is_zero:
            loss = loss + beta * kl
    mf = m.astype(jnp.float32)
    # Clip fractions count tokens where the clip actually binds the objective (TRL's
    # definition): rho below 1 - eps_low with A < 0, or above 1 + eps_high with A > 0.
    parts = {
        "kl": kl * mf,
        "ratio": ratio * mf,
        "clip_low": ((ratio < 1.0 - eps_low) & (adv < 0)).astype(jnp.float32) * mf,
        "clip_high": ((ratio > 1.0 + eps_high) & (adv > 0)).astype(jnp.float32) * mf,
    }
    return loss * mf, parts


def mask_truncated(mask: jax.Array, truncated: jax.Array) -> jax.Array:
    """The loss mask without truncated completions: bool [N, T] = mask & ~truncated[:, None].

    `mask_truncated_completions` of TRL's GRPOConfig and DAPO's overlong filtering: a completion
    cut off at max_new_tokens (truncated bool [N]) is no finished answer, so its tokens add no
    loss, no gradient and no denominator count; its reward still enters the group's advantage
    statistics (the mask is applied after the advantages, as in TRL).
    """
    return mask.astype(bool) & ~truncated.astype(bool)[:, None]


def loss_denominator(mask: jax.Array, reduction: Reduction) -> jax.Array:
    """The loss denominator of a (micro-)batch, float32 []: sequences with >= 1 token
    ("sequence_mean") or tokens ("token_mean"). It depends on the mask only, so the train loop
    can total it over all micro-batches before the first gradient."""
    tokens_per_seq = mask.astype(jnp.float32).sum(axis=1)
    if reduction == "sequence_mean":
        return (tokens_per_seq > 0).sum().astype(jnp.float32)
    return tokens_per_seq.sum()


def grpo_loss_terms(
    logp: jax.Array,
    old_logp: jax.Array | None,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.04,
    reduction: Reduction = "sequence_mean",
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(numerator, denominator, metrics) of the GRPO loss for one (micro-)batch.

    Shapes as in `per_token_loss`. Reductions:
      "sequence_mean" (GRPO-SIF): numerator = sum over sequences of the mean over that
        sequence's tokens; denominator = number of sequences with >= 1 token.
      "token_mean": numerator = sum over all tokens; denominator = number of tokens.
    Summing numerators and denominators over micro-batches and dividing reproduces the
    full-batch loss exactly (and its gradient, since the denominator does not depend on logp).
    For gradient accumulation, differentiate numerator_k / D_total per micro-batch with the
    total denominator D_total known before the first micro-batch (it only depends on masks).

    Metrics (float32 scalars, masked over this batch's tokens): kl_mean, ratio_mean,
    clip_low_fraction, clip_high_fraction, and num_tokens / num_sequences so callers can weight
    them when averaging over micro-batches.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    loss, parts = per_token_loss(
        logp, old_logp, ref_logp, advantages, mask, eps_low=eps_low, eps_high=eps_high, beta=beta
    )
    mf = mask.astype(jnp.float32)
    tokens_per_seq = mf.sum(axis=1)
    num_tokens = tokens_per_seq.sum()
    has_tokens = tokens_per_seq > 0
    if reduction == "sequence_mean":
        per_seq = loss.sum(axis=1) / jnp.maximum(tokens_per_seq, 1.0)
        numerator = jnp.sum(jnp.where(has_tokens, per_seq, 0.0))
        denominator = loss_denominator(mask, reduction)
    else:
        numerator = loss.sum()
        denominator = loss_denominator(mask, reduction)
    safe_tokens = jnp.maximum(num_tokens, 1.0)
    metrics = {
        "kl_mean": parts["kl"].sum() / safe_tokens,
        "ratio_mean": parts["ratio"].sum() / safe_tokens,
        "clip_low_fraction": parts["clip_low"].sum() / safe_tokens,
        "clip_high_fraction": parts["clip_high"].sum() / safe_tokens,
        "num_tokens": num_tokens,
        "num_sequences": has_tokens.sum().astype(jnp.float32),
    }
    return numerator, denominator, metrics


def grpo_loss(
    logp: jax.Array,
    old_logp: jax.Array | None,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.04,
    reduction: Reduction = "sequence_mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO loss (float32 scalar) = numerator / max(denominator, 1), and its metrics.

    Arguments as in `grpo_loss_terms`; jit-compatible (wrap with static keyword arguments, e.g.
    `jax.jit(grpo_loss, static_argnames=("eps_low", "eps_high", "beta", "reduction"))`).
    """
    numerator, denominator, metrics = grpo_loss_terms(
        logp, old_logp, ref_logp, advantages, mask,
        eps_low=eps_low, eps_high=eps_high, beta=beta, reduction=reduction,
    )
    loss = numerator / jnp.maximum(denominator, 1.0)
    return loss, {**metrics, "loss": loss}
