"""Plain-jnp attention with region/visual masses: the oracle for the kernels and the CPU path.

Shapes follow `jax.nn.dot_product_attention`: q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D].
This version materialises the [B, Hq, Lq, Lk] logits; the Pallas kernels never do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# A large finite value rather than -inf so that fully masked rows give no NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def key_mask(
    batch: int,
    q_len: int,
    kv_len: int,
    *,
    causal: bool,
    q_segment_ids: jax.Array | None,
    kv_segment_ids: jax.Array | None,
    kv_valid: jax.Array | None,
) -> jax.Array:
    """Which keys each query may see: bool [B, 1, Lq, Lk].

    Causal masking is bottom-right aligned: query i sits at absolute position
    `kv_len - q_len + i`, so Lq == Lk is the usual lower triangle and Lq = 1 sees every key.
    """
    mask = jnp.ones((batch, 1, q_len, kv_len), dtype=bool)
    if causal:
        q_pos = jnp.arange(q_len)[:, None] + (kv_len - q_len)
        k_pos = jnp.arange(kv_len)[None, :]
        mask = mask & (k_pos <= q_pos)[None, None]
    if q_segment_ids is not None or kv_segment_ids is not None:
        if q_segment_ids is None or kv_segment_ids is None:
            raise ValueError("q_segment_ids and kv_segment_ids must be given together")
        mask = mask & (q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :])
    if kv_valid is not None:
        mask = mask & kv_valid[:, None, None, :].astype(bool)
    return mask


def _grouping(q: jax.Array, k: jax.Array, softmax_scale: float | None) -> tuple[int, float]:
    """(query heads per key/value head, softmax scale) for q [B, Lq, Hq, D], k [B, Lk, Hkv, D]."""
    num_heads, head_dim, num_kv_heads = q.shape[2], q.shape[3], k.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"query heads {num_heads} not a multiple of key/value heads {num_kv_heads}")
    return num_heads // num_kv_heads, head_dim**-0.5 if softmax_scale is None else softmax_scale


def _probs_and_masses(
    logits: jax.Array,
    *,
    causal: bool,
    q_segment_ids: jax.Array | None,
    kv_segment_ids: jax.Array | None,
    kv_valid: jax.Array | None,
    visual_mask: jax.Array | None,
    visual_scale: jax.Array | None,
    region_mask: jax.Array | None,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Scaled logits [B, Hq, Lq, Lk] float32 -> (probs [B, Hq, Lq, Lk], region_mass, visual_mass
    [B, Hq, Lq] | None): AdaptVis scaling of visual keys, the key mask, softmax (rows with no
    visible key sum to 0, not 1) and the masses (no gradient)."""
    batch, _, q_len, kv_len = logits.shape
    if visual_scale is not None:
        if visual_mask is None:
            raise ValueError("visual_scale needs visual_mask (which keys are visual)")
        row_scale = visual_scale.astype(jnp.float32)[:, None, :, None]
        logits = jnp.where(visual_mask[:, None, None, :], logits * row_scale, logits)
    mask = key_mask(batch, q_len, kv_len, causal=causal, q_segment_ids=q_segment_ids,
                    kv_segment_ids=kv_segment_ids, kv_valid=kv_valid)
    logits = jnp.where(mask, logits, MASK_VALUE)
    probs = jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)

    def mass(key_set: jax.Array | None) -> jax.Array | None:
        if key_set is None:
            return None
        return jax.lax.stop_gradient(jnp.sum(jnp.where(key_set[:, None, None, :], probs, 0.0), axis=-1))

    return probs, mass(region_mask), mass(visual_mask)


def attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    kv_valid: jax.Array | None = None,
    visual_mask: jax.Array | None = None,
    visual_scale: jax.Array | None = None,
    region_mask: jax.Array | None = None,
    softmax_scale: float | None = None,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Returns (out [B, Lq, Hq, D] in q.dtype, region_mass, visual_mass [B, Hq, Lq] f32 | None).

    visual_scale [B, Lq] multiplies the (scaled) logits of visual keys row by row (AdaptVis).
    A query row with no visible key gets out = 0 and masses 0.
    """
    batch, q_len, num_heads, head_dim = q.shape
    kv_len, num_kv_heads = k.shape[1], k.shape[2]
    group, scale = _grouping(q, k, softmax_scale)
    qf = q.astype(jnp.float32).reshape(batch, q_len, num_kv_heads, group, head_dim)
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", qf, k.astype(jnp.float32)) * scale
    probs, region_mass, visual_mass = _probs_and_masses(
        logits.reshape(batch, num_heads, q_len, kv_len), causal=causal, q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids, kv_valid=kv_valid, visual_mask=visual_mask, visual_scale=visual_scale,
        region_mask=region_mask)
    vf = v.astype(jnp.float32).reshape(batch, kv_len, num_kv_heads, 1, head_dim)
    vf = jnp.broadcast_to(vf, (batch, kv_len, num_kv_heads, group, head_dim))
    vf = vf.reshape(batch, kv_len, num_heads, head_dim)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, vf).astype(q.dtype)
    return out, region_mass, visual_mass


def single_query_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    kv_valid: jax.Array | None = None,
    visual_mask: jax.Array | None = None,
    visual_scale: jax.Array | None = None,
    region_mask: jax.Array | None = None,
    softmax_scale: float | None = None,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """`attention_reference` for one query per row (a decode step, q [B, 1, Hq, D]), as
    multiply-and-reduce over the keys in their [B, Lk, Hkv, D] layout: no dot, hence no transposed
    copy of a KV cache per layer and step (XLA:CPU fuses the products and reductions, and a slice
    of a stacked cache, into single loops). Causal masking is moot for one bottom-right query.
    Same returns as `attention_reference` (tested against it)."""
    batch, q_len, num_heads, head_dim = q.shape
    if q_len != 1:
        raise ValueError(f"single_query_attention: q_len must be 1, got {q_len}")
    kv_len, num_kv_heads = k.shape[1], k.shape[2]
    group, scale = _grouping(q, k, softmax_scale)
    qf = q.astype(jnp.float32).reshape(batch, 1, num_kv_heads, group, head_dim)
    logits = jnp.sum(qf * k.astype(jnp.float32)[:, :, :, None, :], axis=-1) * scale  # [B, Lk, Hkv, G]
    logits = logits.reshape(batch, kv_len, num_heads).transpose(0, 2, 1)[:, :, None, :]  # [B, Hq, 1, Lk]
    probs, region_mass, visual_mass = _probs_and_masses(
        logits, causal=False, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, kv_valid=kv_valid,
        visual_mask=visual_mask, visual_scale=visual_scale, region_mask=region_mask)
    weights = probs[:, :, 0, :].transpose(0, 2, 1).reshape(batch, kv_len, num_kv_heads, group, 1)
    out = jnp.sum(weights * v.astype(jnp.float32)[:, :, :, None, :], axis=1)  # [B, Hkv, G, D]
    return out.reshape(batch, 1, num_heads, head_dim).astype(q.dtype), region_mass, visual_mass
