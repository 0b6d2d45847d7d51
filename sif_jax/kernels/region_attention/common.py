"""Host-side (XLA) preparation shared by the Pallas kernels: key flags, padding, block tables.

Everything here runs outside the kernels on small per-token arrays ([B, L] or [B, nq, nk]);
nothing is O(Lq * Lk).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sif_jax.kernels.region_attention.reference import MASK_VALUE

# Bits of the per-key flag word. One int32 per key carries all three key masks so a kernel
# loads one small block instead of three.
VALID = 1
VISUAL = 2
REGION = 4

__all__ = [
    "MASK_VALUE", "REGION", "VALID", "VISUAL", "block_tables", "fetch_index", "key_flags",
    "pad_axis", "round_up",
]


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def pad_axis(x: jax.Array, axis: int, size: int, value=0, mode: str = "constant") -> jax.Array:
    """Pads `axis` of x at the end up to `size`."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    if mode == "edge":
        return jnp.pad(x, widths, mode="edge")
    return jnp.pad(x, widths, constant_values=value)


def key_flags(
    batch: int,
    kv_len: int,
    padded_len: int,
    *,
    kv_valid: jax.Array | None,
    visual_mask: jax.Array | None,
    region_mask: jax.Array | None,
) -> jax.Array:
    """int32 [B, padded_len]: VALID | VISUAL | REGION bits per key; padded keys are 0 (invalid)."""
    flags = jnp.full((batch, kv_len), VALID, jnp.int32)
    if kv_valid is not None:
        flags = jnp.where(kv_valid.astype(bool), flags, 0)
    if visual_mask is not None:
        flags = flags | jnp.where(visual_mask.astype(bool), VISUAL, 0)
    if region_mask is not None:
        flags = flags | jnp.where(region_mask.astype(bool), REGION, 0)
    return pad_axis(flags, 1, padded_len, 0)


def block_tables(
    flags: jax.Array,
    q_seg: jax.Array | None,
    kv_seg: jax.Array | None,
    *,
    block_q: int,
    block_k: int,
    num_q_blocks: int,
    causal: bool,
    offset: int,
) -> jax.Array:
    """bool [B, nq, nk]: may query block qi see anything in key block ki?

    Conservative (a True block may still be fully masked; the kernel masks element-wise), but
    a False block certainly has no visible (query, key) pair, so the kernel skips it.
    flags: int32 [B, Lk_p]; q_seg int32 [B, Lq_p] (padded by repeating the edge so padding
    does not widen the interval), kv_seg int32 [B, Lk_p]; offset = Lk - Lq (unpadded) aligns
    causal masking to the bottom right.
    """
    batch, kv_len = flags.shape
    nk = kv_len // block_k
    valid = (flags & VALID).reshape(batch, nk, block_k) != 0
    run = jnp.broadcast_to(jnp.any(valid, axis=-1)[:, None, :], (batch, num_q_blocks, nk))
    if causal:
        q_last = jnp.arange(num_q_blocks) * block_q + block_q - 1 + offset
        k_first = jnp.arange(nk) * block_k
        run = run & (k_first[None, :] <= q_last[:, None])[None]
    if q_seg is not None:
        # Interval test on [min, max] segment id per block: disjoint intervals share no id.
        qs = q_seg.reshape(batch, num_q_blocks, block_q)
        big = jnp.iinfo(jnp.int32).max
        ks = kv_seg.reshape(batch, nk, block_k)
        k_lo = jnp.min(jnp.where(valid, ks, big), axis=-1)
        k_hi = jnp.max(jnp.where(valid, ks, -big), axis=-1)
        q_lo, q_hi = qs.min(-1), qs.max(-1)
        run = run & (q_lo[:, :, None] <= k_hi[:, None, :]) & (k_lo[:, None, :] <= q_hi[:, :, None])
    return run


def fetch_index(run: jax.Array) -> jax.Array:
    """int32, same shape as bool `run` [..., n]: which block to load at each step of the last axis.

    A skipped step re-uses the index of the last block that ran (the pipeline then issues no
    copy because the block index did not change); before the first running block it loads the
    first running block, which is the next one needed. Rows that never run load block 0.
    """
    n = run.shape[-1]
    idx = jnp.arange(n, dtype=jnp.int32)
    last = jax.lax.cummax(jnp.where(run, idx, -1), axis=run.ndim - 1)
    first = jnp.argmax(run, axis=-1).astype(jnp.int32)[..., None]
    return jnp.where(last >= 0, last, first).astype(jnp.int32)
