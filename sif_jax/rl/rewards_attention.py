"""SAYO rewards (METHODS §2): the region-attention reward (jit-compiled array work) and the
answer-tag/length format reward.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import partial

import jax
import jax.numpy as jnp

ATTN_EPS = 1e-8
_ANSWER_TAGS = re.compile(r"<answer>.*?</answer>", re.DOTALL)


def top_k_count(lengths: jax.Array, top_fraction: float) -> jax.Array:
    """k = max(1, floor(top_fraction * (len - 1))), int32 [N], computed in integers.

    `top_fraction` is turned into a fraction p/q (0.3 → 3/10) so floor() is exact: in float32
    0.7 * 10 = 6.9999998 would floor to 6.
    """
    frac = Fraction(top_fraction).limit_denominator(1000)
    k = (frac.numerator * jnp.maximum(lengths - 1, 0)) // frac.denominator
    return jnp.maximum(k, 1).astype(jnp.int32)


def top_entropy_mask(entropies: jax.Array, completion_mask: jax.Array, top_fraction: float) -> jax.Array:
    """bool [N, T]: the k highest-entropy real completion tokens of each row (Q in SAYO).

    Padding never enters Q (it ranks below every real token) nor counts in len. Ties go to the
    earlier position (stable sort). Rows without completion tokens select nothing.
    """
    m = completion_mask.astype(bool)
    lengths = m.sum(axis=1)
    # NaN entropies would break the ordering; rank them with the padding.
    key = jnp.where(m & ~jnp.isnan(entropies), entropies.astype(jnp.float32), -jnp.inf)
    order = jnp.argsort(-key, axis=1, stable=True)  # positions by descending entropy
    ranks = jnp.argsort(order, axis=1, stable=True)  # rank of each position
    k = top_k_count(lengths, top_fraction)
    return (ranks < k[:, None]) & m


@partial(jax.jit, static_argnames=("top_fraction", "eps"))
def region_attention_reward(
    entropies: jax.Array,
    region_mass: jax.Array,
    visual_mass: jax.Array,
    completion_mask: jax.Array,
    region_tokens: jax.Array,
    visual_tokens: jax.Array,
    top_fraction: float = 0.3,
    eps: float = ATTN_EPS,
) -> tuple[jax.Array, jax.Array]:
    """SAYO region-attention reward and TAS per sample.

    Args:
      entropies, region_mass, visual_mass: float [N, T] per completion token.
      completion_mask: bool [N, T].
      region_tokens, visual_tokens: int [N] visual tokens inside the target region / image.
      top_fraction: share of the highest-entropy tokens used as queries (static; SAYO 0.3).

    With Q the top-k tokens (`top_entropy_mask`), per-token *average* attention
    a = mean_Q region_mass / region_tokens, v = mean_Q visual_mass / visual_tokens (uniform
    attention over the image gives a = v), x = (a + eps) / (v + eps),
    reward = tanh(log x) = (x² - 1) / (x² + 1) ∈ (-1, 1), TAS = x² / (1 + x²) ∈ (0, 1).

    Samples with no region tokens, no visual tokens or no completion tokens get reward 0 and
    TAS 0.5 (the "no preference" point), so they do not move the group's advantages.

    Returns: (reward float32 [N], tas float32 [N]).
    """
    q = top_entropy_mask(entropies, completion_mask, top_fraction).astype(jnp.float32)
    nq = jnp.maximum(q.sum(axis=1), 1.0)
    rt = region_tokens.astype(jnp.float32)
    vt = visual_tokens.astype(jnp.float32)
    a = (q * region_mass.astype(jnp.float32)).sum(axis=1) / nq / jnp.maximum(rt, 1.0)
    v = (q * visual_mass.astype(jnp.float32)).sum(axis=1) / nq / jnp.maximum(vt, 1.0)
    log_x = jnp.log(a + eps) - jnp.log(v + eps)
    valid = (rt > 0) & (vt > 0) & (completion_mask.astype(bool).sum(axis=1) > 0)
    # tanh(log x) and sigmoid(2 log x) are the stated rational forms without overflowing x².
    reward = jnp.where(valid, jnp.tanh(log_x), 0.0)
    tas = jnp.where(valid, jax.nn.sigmoid(2.0 * log_x), 0.5)
    return reward, tas


def sayo_format_score(text: str, length: int, *, short: int = 60, long: int = 100, scale: float = 0.6) -> float:
    """SAYO format reward, literally: [has <answer>…</answer>] · f_long · f_short with
    f_long = min(1, scale·long/L) if L > long else 1 and f_short = min(1, scale·L/short) if
    L < short else 1 (so 1 for short <= L <= long, 0.6 just outside, and a jump at both ends —
    as in the original). L = completion token count. Only the tags are checked (possibly empty
    content); anything that is not a string scores 0.
    """
    if not isinstance(text, str) or not _ANSWER_TAGS.search(text):
        return 0.0
    length = int(length)
    f_long = min(1.0, scale * long / length) if length > long else 1.0
    f_short = min(1.0, scale * length / short) if length < short else 1.0
    return f_long * f_short
