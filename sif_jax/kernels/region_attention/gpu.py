"""Region attention forward for NVIDIA GPUs with Pallas (Triton lowering).

Why Triton and not Mosaic GPU: the Mosaic GPU backend wants warpgroup-level programming
(TMA, wgmma, explicit pipelining, Hopper-only for its fast paths) and cannot be run by the
generic Pallas interpreter, so nothing written for it could be checked on the CPU-only
machine this was written on. The Triton lowering runs on Ampere and Hopper, and the same
kernel runs on CPU with `interpret=True`, which is how tests/kernels checks it.

Kernel: grid (q blocks, batch, q heads); each program keeps one q tile and walks the kv
blocks with `fori_loop` (causal: only up to the diagonal, bottom-right aligned), carrying the
online-softmax state (m, l, acc) and two extra running sums (region, visual) rescaled like l.
Key masks travel as one int32 flag word per key (valid | visual | region). GQA: the kv
BlockSpec maps q head h to kv head h // group, so K/V are not repeated.

Lags the TPU kernel:
  * backward: `jax.custom_vjp` whose backward is the VJP of the reference (materialises the
    [B, Hq, Lq, Lk] attention matrix; fine for the reward pass, which needs no gradient, and for
    short training sequences, not for long ones);
  * no block skipping for segment ids / padding (only causal bounds the loop); masks are exact;
  * head_dim is zero-padded to a power of two (80 -> 128), costing a copy of q, k, v;
  * not run on a GPU yet (no GPU in the authoring session): block sizes and warps untuned.

Unsupported inputs (dtypes other than f32/bf16/f16, head_dim > 256) fall back to the reference
with a one-time log line, never a wrong answer.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from sif_jax.kernels.region_attention import common
from sif_jax.kernels.region_attention.common import MASK_VALUE, REGION, VALID, VISUAL
from sif_jax.kernels.region_attention.reference import attention_reference

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
MAX_HEAD_DIM = 256
NT = (((1,), (1,)), ((), ()))


@functools.cache
def _log_once(message: str) -> None:
    log.warning(message)


def _fwd_kernel(q_ref, k_ref, v_ref, flags_ref, qseg_ref, kseg_ref, alpha_ref,
                o_ref, region_ref, visual_ref, *, causal: bool, scale: float, offset: int,
                block_q: int, block_k: int, num_k_blocks: int):
    qi = pl.program_id(0)
    q = q_ref[...]  # [bq, D]
    bq, head_dim = q.shape
    q_start = qi * block_q
    qseg = qseg_ref[...][:, None] if qseg_ref is not None else None
    alpha = alpha_ref[...][:, None] if alpha_ref is not None else None
    q_pos = q_start + offset + jnp.arange(block_q)[:, None]

    def body(kb, carry):
        m_prev, l_prev, acc, r_prev, vis_prev = carry
        ks = pl.ds(kb * block_k, block_k)
        k, v = k_ref[ks, :], v_ref[ks, :]
        s = lax.dot_general(q, k, NT, preferred_element_type=jnp.float32) * scale
        flags = flags_ref[ks][None, :]  # [1, bk]
        visible = (flags & VALID) != 0
        visual_key = (flags & VISUAL) != 0
        if alpha is not None:
            s = jnp.where(visual_key, s * alpha, s)
        if causal:
            visible = visible & (kb * block_k + jnp.arange(block_k)[None, :] <= q_pos)
        if qseg is not None:
            visible = visible & (qseg == kseg_ref[ks][None, :])
        s = jnp.where(visible, s, MASK_VALUE)
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1))
        corr = jnp.exp(m_prev - m_new)
        p = jnp.where(visible, jnp.exp(s - m_new[:, None]), 0.0)
        l_new = corr * l_prev + jnp.sum(p, axis=1)
        acc = corr[:, None] * acc + jnp.dot(p.astype(v.dtype), v,
                                            preferred_element_type=jnp.float32)
        r_new = corr * r_prev + jnp.sum(jnp.where((flags & REGION) != 0, p, 0.0), axis=1)
        vis_new = corr * vis_prev + jnp.sum(jnp.where(visual_key, p, 0.0), axis=1)
        return m_new, l_new, acc, r_new, vis_new

    if causal:
        # Key blocks past the diagonal of this q block's last row are never visible.
        upper = jnp.clip(lax.div(q_start + block_q + offset + block_k - 1, block_k),
                         0, num_k_blocks)
    else:
        upper = num_k_blocks
    zeros = jnp.zeros((bq,), jnp.float32)
    init = (jnp.full((bq,), MASK_VALUE, jnp.float32), zeros,
            jnp.zeros((bq, head_dim), jnp.float32), zeros, zeros)
    _, denom, acc, r, vis = lax.fori_loop(0, upper, body, init)
    inv = 1.0 / jnp.where(denom == 0.0, 1.0, denom)  # no visible key: out 0, masses 0
    o_ref[...] = (acc * inv[:, None]).astype(o_ref.dtype)
    if region_ref is not None:
        region_ref[...] = r * inv
    if visual_ref is not None:
        visual_ref[...] = vis * inv


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _forward(q, k, v, *, causal, q_segment_ids, kv_segment_ids, kv_valid, visual_mask,
             visual_scale, region_mask, softmax_scale, block_q, block_k, interpret, num_warps):
    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scale = float(head_dim**-0.5 if softmax_scale is None else softmax_scale)
    d_pad = max(16, _next_pow2(head_dim))  # Triton tiles are powers of two
    q_pad, kv_pad = common.round_up(q_len, block_q), common.round_up(kv_len, block_k)
    qp = common.pad_axis(common.pad_axis(q, 3, d_pad), 1, q_pad)
    kp = common.pad_axis(common.pad_axis(k, 3, d_pad), 1, kv_pad)
    vp = common.pad_axis(common.pad_axis(v, 3, d_pad), 1, kv_pad)
    flags = common.key_flags(batch, kv_len, kv_pad, kv_valid=kv_valid, visual_mask=visual_mask,
                             region_mask=region_mask)
    qseg = kseg = alpha = None
    if q_segment_ids is not None:
        qseg = common.pad_axis(q_segment_ids.astype(jnp.int32), 1, q_pad, mode="edge")
        kseg = common.pad_axis(kv_segment_ids.astype(jnp.int32), 1, kv_pad)
    if visual_scale is not None:
        alpha = common.pad_axis(visual_scale.astype(jnp.float32), 1, q_pad, 1.0)

    q_spec = pl.BlockSpec((None, block_q, None, d_pad), lambda i, b, h: (b, i, h, 0))
    kv_spec = pl.BlockSpec((None, kv_pad, None, d_pad), lambda i, b, h: (b, 0, h // group, 0))
    key_spec = pl.BlockSpec((None, kv_pad), lambda i, b, h: (b, 0))
    row_spec = pl.BlockSpec((None, block_q), lambda i, b, h: (b, i))
    mass_spec = pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i))
    mass_shape = jax.ShapeDtypeStruct((batch, heads, q_pad), jnp.float32)
    kernel = functools.partial(
        _fwd_kernel, causal=bool(causal), scale=scale, offset=kv_len - q_len, block_q=block_q,
        block_k=block_k, num_k_blocks=kv_pad // block_k)
    compiler_params = None
    if not interpret:
        from jax.experimental.pallas import triton as pltriton

        compiler_params = pltriton.CompilerParams(
            num_warps=num_warps or (4 if d_pad <= 64 else 8), num_stages=2)
    out, region, visual = pl.pallas_call(
        kernel,
        grid=(q_pad // block_q, batch, heads),
        in_specs=[q_spec, kv_spec, kv_spec, key_spec,
                  row_spec if qseg is not None else None,
                  key_spec if kseg is not None else None,
                  row_spec if alpha is not None else None],
        out_specs=[q_spec, mass_spec if region_mask is not None else None,
                   mass_spec if visual_mask is not None else None],
        out_shape=[jax.ShapeDtypeStruct(qp.shape, q.dtype),
                   mass_shape if region_mask is not None else None,
                   mass_shape if visual_mask is not None else None],
        compiler_params=compiler_params,
        interpret=interpret,
        name="region_attention_fwd_gpu",
    )(qp, kp, vp, flags, qseg, kseg, alpha)
    out = out[:, :q_len, :, :head_dim]
    region = None if region is None else region[:, :, :q_len]
    visual = None if visual is None else visual[:, :, :q_len]
    return out, region, visual


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(static, q, k, v, masks):
    return _forward(q, k, v, **masks, **dict(static))


def _attention_fwd(static, q, k, v, masks):
    return _forward(q, k, v, **masks, **dict(static)), (q, k, v, masks)


def _attention_bwd(static, res, cts):
    q, k, v, masks = res
    st = dict(static)
    ref_kwargs = dict(masks, causal=st["causal"], softmax_scale=st["softmax_scale"])

    def f(q, k, v, visual_scale):
        return attention_reference(q, k, v, **{**ref_kwargs, "visual_scale": visual_scale})[0]

    _, vjp = jax.vjp(f, q, k, v, masks["visual_scale"])
    dq, dk, dv, dalpha = vjp(cts[0])  # the masses carry no gradient
    d_masks = {name: None for name in masks}
    d_masks["visual_scale"] = dalpha
    return dq, dk, dv, d_masks


_attention.defvjp(_attention_fwd, _attention_bwd)


def region_attention_gpu(
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
    block_q: int = 64,
    block_k: int = 64,
    interpret: bool | None = None,
    num_warps: int | None = None,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Pallas (Triton) region attention; same contract as `reference.attention_reference`.

    q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D]; masks bool [B, Lk]; visual_scale f32 [B, Lq].
    Returns out [B, Lq, Hq, D] (q.dtype), region_mass / visual_mass f32 [B, Hq, Lq] | None.
    block_q, block_k: powers of two >= 16. interpret: None = compile on GPU, run the generic
    Pallas interpreter elsewhere (logged once).
    """
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("q_segment_ids and kv_segment_ids must be given together")
    if visual_scale is not None and visual_mask is None:
        raise ValueError("visual_scale needs visual_mask (which keys are visual)")
    for name, blk in (("block_q", block_q), ("block_k", block_k)):
        if blk < 16 or blk & (blk - 1):
            raise ValueError(f"{name}={blk}; expected a power of two >= 16")
    masks = dict(q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, kv_valid=kv_valid,
                 visual_mask=visual_mask, visual_scale=visual_scale, region_mask=region_mask)
    reason = None
    if q.dtype not in SUPPORTED_DTYPES:
        reason = f"dtype {q.dtype}"
    elif q.shape[-1] > MAX_HEAD_DIM:
        reason = f"head_dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    if reason is not None:
        _log_once(f"region_attention: pallas_gpu does not support {reason}; using the reference")
        return attention_reference(q, k, v, causal=causal, softmax_scale=softmax_scale, **masks)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
        if interpret:
            _log_once("region_attention: backend 'pallas_gpu' off GPU runs in the Pallas "
                      "interpreter (slow; for tests)")
    # A tuple of pairs is hashable, as nondiff_argnums need.
    static = (("causal", bool(causal)), ("softmax_scale", softmax_scale), ("block_q", block_q),
              ("block_k", block_k), ("interpret", bool(interpret)), ("num_warps", num_warps))
    out, region, visual = _attention(static, q, k, v, masks)
    stop = lax.stop_gradient
    return out, None if region is None else stop(region), None if visual is None else stop(visual)
