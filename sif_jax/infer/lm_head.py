"""LM-head statistics over vocabulary chunks: the log-prob of a target token and the entropy of
the temperature-scaled next-token distribution, without materialising [N, T, V] logits.

The scoring pass (`infer.scoring.score`, GRPO) and the SFT loss (`sft.sft_loss_terms`) both read them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def chunked_token_stats(
    hidden: jax.Array, kernel: jax.Array, targets: jax.Array, *, temperature: float, chunk: int
) -> tuple[jax.Array, jax.Array]:
    """Log-prob of `targets` and entropy under softmax(hidden @ kernel / temperature).

    Args:
      hidden: [N, T, E]; kernel: [E, V]; targets: int [N, T].
      chunk: vocabulary chunk size; the logits of one chunk [N, T, chunk] are live at a time.

    Returns:
      logprobs, entropies: float32 [N, T]. An online log-sum-exp accumulates m (max),
      s = sum exp(l - m) and u = sum exp(l - m) * l, so entropy = lse - u / s.
    """
    vocab = kernel.shape[1]
    n_chunks = -(-vocab // chunk)
    kernel = jnp.pad(kernel, ((0, 0), (0, n_chunks * chunk - vocab)))
    kernel = kernel.reshape(kernel.shape[0], n_chunks, chunk).transpose(1, 0, 2)
    inv_t = 1.0 / (temperature if temperature > 0 else 1.0)
    shape = targets.shape

    def body(carry, xs):
        m, s, u, target_logit = carry
        index, w = xs
        logits = jnp.einsum("nte,ev->ntv", hidden, w.astype(hidden.dtype)).astype(jnp.float32) * inv_t
        ids = index * chunk + jnp.arange(chunk)
        logits = jnp.where(ids < vocab, logits, -jnp.inf)
        new_m = jnp.maximum(m, jnp.max(logits, axis=-1))
        correction = jnp.exp(m - new_m)
        p = jnp.exp(logits - new_m[..., None])
        s = s * correction + jnp.sum(p, axis=-1)
        u = u * correction + jnp.sum(jnp.where(p > 0, p * logits, 0.0), axis=-1)
        hit = ids[None, None, :] == targets[..., None]
        target_logit = target_logit + jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
        return (new_m, s, u, target_logit), None

    init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32),
            jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))
    (m, s, u, target_logit), _ = jax.lax.scan(body, init, (jnp.arange(n_chunks), kernel))
    lse = m + jnp.log(s)
    return target_logit - lse, lse - u / s
