"""Region attention for NVIDIA GPUs with Pallas (Triton lowering): forward and backward kernels.

Why Triton and not Mosaic GPU: the Mosaic GPU backend wants warpgroup-level programming
(TMA, wgmma, explicit pipelining, Hopper-only for its fast paths) and cannot be run by the
generic Pallas interpreter, so nothing written for it could be checked on the CPU-only
machine this was written on. The Triton lowering runs on Ampere and Hopper, and the same
kernels run on CPU with `interpret=True`, which is how tests/kernels checks them.

Forward: grid (q blocks, batch, q heads); each program keeps one q tile and walks the kv
blocks with `fori_loop` (causal: only up to the diagonal, bottom-right aligned), carrying the
online-softmax state (m, l, acc) and two extra running sums (region, visual) rescaled like l.
Key masks travel as one int32 flag word per key (valid | visual | region). GQA: the kv
BlockSpec maps q head h to kv head h // group, so K/V are not repeated. Under `jax.grad` the
forward also writes the log-sum-exp lse = m + log(l) per query row (f32 [B, Hq, Lq]).

Backward (FlashAttention-2, Dao 2023, arXiv:2307.08691, Algorithm 2; split into two kernels
as in the Triton fused-attention tutorial), never materialising [B, Hq, Lq, Lk]. With
s0 = scale * q.k, s = s0 * a (a = visual_scale[q] on visual keys, else 1), p = exp(s - lse)
on visible pairs (0 elsewhere), D = rowsum(dout * out) and ds = p * (dout.v - D):
  * dq kernel, grid (q blocks, batch, q heads): walks kv blocks (causal: up to the diagonal),
    dq = scale * sum_k (ds * a) k, and d visual_scale = sum over visual keys of ds * s0
    (per head, summed over heads outside);
  * dk/dv kernel, grid (kv blocks, batch, kv heads): walks the q heads of the GQA group and
    the q blocks (causal: from the diagonal on), dv = sum_q p^T dout,
    dk = scale * sum_q (ds * a)^T q, so dk/dv come out already summed over the group.
Fully masked rows (no visible key) have p = 0, hence out = 0 and zero gradient. The region
and visual masses carry no gradient. Forward and backward tile sizes are separate
(`block_q`/`block_k`; `block_q_dq`/`block_k_dq`; `block_q_dkv`/`block_k_dkv`).

Lags the TPU kernel:
  * no block skipping for segment ids / padding (only causal bounds the loops); masks are exact;
  * head_dim is zero-padded to a power of two (80 -> 128), costing a copy of q, k, v (and of
    dout, dq, dk, dv in the backward);
  * not run on a GPU yet (no GPU in the authoring session): block sizes and warps untuned.

Unsupported inputs (dtypes other than f32/bf16/f16, head_dim > 256) fall back to the reference
(forward and its VJP) with a one-time log line, never a wrong answer.
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
NT = (((1,), (1,)), ((), ()))  # a @ b.T
TN = (((0,), (0,)), ((), ()))  # a.T @ b


@functools.cache
def _log_once(message: str) -> None:
    log.warning(message)


def _fwd_kernel(q_ref, k_ref, v_ref, flags_ref, qseg_ref, kseg_ref, alpha_ref,
                o_ref, region_ref, visual_ref, lse_ref, *, causal: bool, scale: float, offset: int,
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
    m, denom, acc, r, vis = lax.fori_loop(0, upper, body, init)
    seen = denom > 0.0
    inv = 1.0 / jnp.where(seen, denom, 1.0)  # no visible key: out 0, masses 0
    o_ref[...] = (acc * inv[:, None]).astype(o_ref.dtype)
    if region_ref is not None:
        region_ref[...] = r * inv
    if visual_ref is not None:
        visual_ref[...] = vis * inv
    if lse_ref is not None:
        # Rows with no visible key get lse 0; the backward gives them p = 0 through the mask.
        lse_ref[...] = jnp.where(seen, m + jnp.log(jnp.where(seen, denom, 1.0)), 0.0)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, flags_ref, qseg_ref, kseg_ref,
               alpha_ref, dq_ref, dalpha_ref, *, causal: bool, scale: float, offset: int,
               block_q: int, block_k: int, num_k_blocks: int):
    qi = pl.program_id(0)
    q, do = q_ref[...], do_ref[...]  # [bq, D]
    lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]  # [bq, 1]
    bq, head_dim = q.shape
    q_start = qi * block_q
    qseg = qseg_ref[...][:, None] if qseg_ref is not None else None
    alpha = alpha_ref[...][:, None] if alpha_ref is not None else None
    q_pos = q_start + offset + jnp.arange(block_q)[:, None]

    def body(kb, carry):
        dq, dalpha = carry
        ks = pl.ds(kb * block_k, block_k)
        k, v = k_ref[ks, :], v_ref[ks, :]
        s0 = lax.dot_general(q, k, NT, preferred_element_type=jnp.float32) * scale
        flags = flags_ref[ks][None, :]  # [1, bk]
        visible = (flags & VALID) != 0
        visual_key = (flags & VISUAL) != 0
        s = jnp.where(visual_key, s0 * alpha, s0) if alpha is not None else s0
        if causal:
            visible = visible & (kb * block_k + jnp.arange(block_k)[None, :] <= q_pos)
        if qseg is not None:
            visible = visible & (qseg == kseg_ref[ks][None, :])
        p = jnp.where(visible, jnp.exp(s - lse), 0.0)
        dp = lax.dot_general(do, v, NT, preferred_element_type=jnp.float32)
        ds = p * (dp - delta)  # d loss / d s
        if alpha is not None:
            dalpha = dalpha + jnp.sum(jnp.where(visual_key, ds * s0, 0.0), axis=1)
            ds = jnp.where(visual_key, ds * alpha, ds)  # d loss / d s0
        dq = dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
        return dq, dalpha

    if causal:
        upper = jnp.clip(lax.div(q_start + block_q + offset + block_k - 1, block_k),
                         0, num_k_blocks)
    else:
        upper = num_k_blocks
    init = (jnp.zeros((bq, head_dim), jnp.float32), jnp.zeros((bq,), jnp.float32))
    dq, dalpha = lax.fori_loop(0, upper, body, init)
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)
    if dalpha_ref is not None:
        dalpha_ref[...] = dalpha


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, flags_ref, qseg_ref, kseg_ref,
                alpha_ref, dk_ref, dv_ref, *, causal: bool, scale: float, offset: int,
                block_q: int, block_k: int, num_q_blocks: int, group: int):
    ki = pl.program_id(0)
    k, v = k_ref[...], v_ref[...]  # [bk, D]
    bk, head_dim = k.shape
    k_start = ki * block_k
    flags = flags_ref[...][None, :]  # [1, bk]
    valid = (flags & VALID) != 0
    visual_key = (flags & VISUAL) != 0
    kseg = kseg_ref[...][None, :] if kseg_ref is not None else None
    k_pos = k_start + jnp.arange(block_k)[None, :]

    def body(qb, carry, g):
        dk, dv = carry
        qs = pl.ds(qb * block_q, block_q)
        q, do = q_ref[qs, g, :], do_ref[qs, g, :]  # [bq, D]
        lse, delta = lse_ref[g, qs][:, None], delta_ref[g, qs][:, None]  # [bq, 1]
        s0 = lax.dot_general(q, k, NT, preferred_element_type=jnp.float32) * scale
        if alpha_ref is not None:
            alpha = alpha_ref[qs][:, None]
            s = jnp.where(visual_key, s0 * alpha, s0)
        else:
            s = s0
        visible = valid
        if causal:
            visible = visible & (k_pos <= qb * block_q + offset + jnp.arange(block_q)[:, None])
        if kseg is not None:
            visible = visible & (qseg_ref[qs][:, None] == kseg)
        p = jnp.where(visible, jnp.exp(s - lse), 0.0)  # [bq, bk]
        dv = dv + lax.dot_general(p.astype(do.dtype), do, TN, preferred_element_type=jnp.float32)
        dp = lax.dot_general(do, v, NT, preferred_element_type=jnp.float32)
        ds = p * (dp - delta)
        if alpha_ref is not None:
            ds = jnp.where(visual_key, ds * alpha, ds)
        dk = dk + lax.dot_general(ds.astype(q.dtype), q, TN, preferred_element_type=jnp.float32)
        return dk, dv

    if causal:
        # Query rows before this key block's first key (bottom-right aligned) never see it.
        lower = jnp.minimum(lax.div(jnp.maximum(k_start - offset, 0), block_q), num_q_blocks)
    else:
        lower = 0

    def head(g, carry):
        return lax.fori_loop(lower, num_q_blocks, functools.partial(body, g=g), carry)

    zeros = jnp.zeros((bk, head_dim), jnp.float32)
    dk, dv = lax.fori_loop(0, group, head, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _head_pad(head_dim: int) -> int:
    return max(16, _next_pow2(head_dim))  # Triton tiles are powers of two


def _key_inputs(batch, q_len, kv_len, q_pad, kv_pad, *, q_segment_ids, kv_segment_ids, kv_valid,
                visual_mask, visual_scale, region_mask):
    """Padded flags int32 [B, kv_pad], q/kv segment ids int32 [B, q_pad]/[B, kv_pad] | None,
    visual_scale f32 [B, q_pad] | None."""
    flags = common.key_flags(batch, kv_len, kv_pad, kv_valid=kv_valid, visual_mask=visual_mask,
                             region_mask=region_mask)
    qseg = kseg = alpha = None
    if q_segment_ids is not None:
        qseg = common.pad_axis(q_segment_ids.astype(jnp.int32), 1, q_pad, mode="edge")
        kseg = common.pad_axis(kv_segment_ids.astype(jnp.int32), 1, kv_pad)
    if visual_scale is not None:
        alpha = common.pad_axis(visual_scale.astype(jnp.float32), 1, q_pad, 1.0)
    return flags, qseg, kseg, alpha


def _compiler_params(interpret: bool, num_warps: int | None, d_pad: int):
    if interpret:
        return None
    from jax.experimental.pallas import triton as pltriton

    return pltriton.CompilerParams(num_warps=num_warps or (4 if d_pad <= 64 else 8), num_stages=2)


def _forward(q, k, v, *, causal, q_segment_ids, kv_segment_ids, kv_valid, visual_mask,
             visual_scale, region_mask, softmax_scale, block_q, block_k, interpret, num_warps,
             with_lse=False, **_backward_blocks):
    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scale = float(head_dim**-0.5 if softmax_scale is None else softmax_scale)
    d_pad = _head_pad(head_dim)
    q_pad, kv_pad = common.round_up(q_len, block_q), common.round_up(kv_len, block_k)
    qp = common.pad_axis(common.pad_axis(q, 3, d_pad), 1, q_pad)
    kp = common.pad_axis(common.pad_axis(k, 3, d_pad), 1, kv_pad)
    vp = common.pad_axis(common.pad_axis(v, 3, d_pad), 1, kv_pad)
    flags, qseg, kseg, alpha = _key_inputs(
        batch, q_len, kv_len, q_pad, kv_pad, q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids, kv_valid=kv_valid, visual_mask=visual_mask,
        visual_scale=visual_scale, region_mask=region_mask)

    q_spec = pl.BlockSpec((None, block_q, None, d_pad), lambda i, b, h: (b, i, h, 0))
    kv_spec = pl.BlockSpec((None, kv_pad, None, d_pad), lambda i, b, h: (b, 0, h // group, 0))
    key_spec = pl.BlockSpec((None, kv_pad), lambda i, b, h: (b, 0))
    row_spec = pl.BlockSpec((None, block_q), lambda i, b, h: (b, i))
    mass_spec = pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i))
    mass_shape = jax.ShapeDtypeStruct((batch, heads, q_pad), jnp.float32)
    kernel = functools.partial(
        _fwd_kernel, causal=bool(causal), scale=scale, offset=kv_len - q_len, block_q=block_q,
        block_k=block_k, num_k_blocks=kv_pad // block_k)
    out, region, visual, lse = pl.pallas_call(
        kernel,
        grid=(q_pad // block_q, batch, heads),
        in_specs=[q_spec, kv_spec, kv_spec, key_spec,
                  row_spec if qseg is not None else None,
                  key_spec if kseg is not None else None,
                  row_spec if alpha is not None else None],
        out_specs=[q_spec, mass_spec if region_mask is not None else None,
                   mass_spec if visual_mask is not None else None,
                   mass_spec if with_lse else None],
        out_shape=[jax.ShapeDtypeStruct(qp.shape, q.dtype),
                   mass_shape if region_mask is not None else None,
                   mass_shape if visual_mask is not None else None,
                   mass_shape if with_lse else None],
        compiler_params=_compiler_params(interpret, num_warps, d_pad),
        interpret=interpret,
        name="region_attention_fwd_gpu",
    )(qp, kp, vp, flags, qseg, kseg, alpha)
    out = out[:, :q_len, :, :head_dim]
    region = None if region is None else region[:, :, :q_len]
    visual = None if visual is None else visual[:, :, :q_len]
    if with_lse:
        return (out, region, visual), lse[:, :, :q_len]
    return out, region, visual


def _backward(q, k, v, out, lse, dout, *, causal, q_segment_ids, kv_segment_ids, kv_valid,
              visual_mask, visual_scale, region_mask, softmax_scale, interpret, num_warps,
              block_q_dq, block_k_dq, block_q_dkv, block_k_dkv, **_forward_blocks):
    """(dq, dk, dv, d visual_scale | None) from the forward's out and lse [B, Hq, Lq] f32."""
    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scale = float(head_dim**-0.5 if softmax_scale is None else softmax_scale)
    d_pad = _head_pad(head_dim)
    q_pad = common.round_up(q_len, max(block_q_dq, block_q_dkv))
    kv_pad = common.round_up(kv_len, max(block_k_dq, block_k_dkv))
    # delta_i = sum_d dout * out: the row term of the softmax VJP (O(B Lq Hq D), XLA fuses it).
    delta = jnp.einsum("bqhd,bqhd->bhq", dout.astype(jnp.float32), out.astype(jnp.float32))
    delta = common.pad_axis(delta, 2, q_pad)
    lse = common.pad_axis(lse, 2, q_pad)  # padded rows have dout = 0: they add nothing
    dout = dout.astype(q.dtype)
    qp = common.pad_axis(common.pad_axis(q, 3, d_pad), 1, q_pad)
    dop = common.pad_axis(common.pad_axis(dout, 3, d_pad), 1, q_pad)
    kp = common.pad_axis(common.pad_axis(k, 3, d_pad), 1, kv_pad)
    vp = common.pad_axis(common.pad_axis(v, 3, d_pad), 1, kv_pad)
    flags, qseg, kseg, alpha = _key_inputs(
        batch, q_len, kv_len, q_pad, kv_pad, q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids, kv_valid=kv_valid, visual_mask=visual_mask,
        visual_scale=visual_scale, region_mask=region_mask)
    inputs = (qp, kp, vp, dop, lse, delta, flags, qseg, kseg, alpha)
    statics = dict(causal=bool(causal), scale=scale, offset=kv_len - q_len)
    compiler_params = _compiler_params(interpret, num_warps, d_pad)

    # dq (and d visual_scale per q head): grid (q blocks, batch, q heads), like the forward.
    bq, bk = block_q_dq, block_k_dq
    q_spec = pl.BlockSpec((None, bq, None, d_pad), lambda i, b, h: (b, i, h, 0))
    kv_spec = pl.BlockSpec((None, kv_pad, None, d_pad), lambda i, b, h: (b, 0, h // group, 0))
    key_spec = pl.BlockSpec((None, kv_pad), lambda i, b, h: (b, 0))
    row_spec = pl.BlockSpec((None, bq), lambda i, b, h: (b, i))
    stat_spec = pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))
    dq, dalpha = pl.pallas_call(
        functools.partial(_dq_kernel, block_q=bq, block_k=bk, num_k_blocks=kv_pad // bk,
                          **statics),
        grid=(q_pad // bq, batch, heads),
        in_specs=[q_spec, kv_spec, kv_spec, q_spec, stat_spec, stat_spec, key_spec,
                  row_spec if qseg is not None else None,
                  key_spec if kseg is not None else None,
                  row_spec if alpha is not None else None],
        out_specs=[q_spec, stat_spec if alpha is not None else None],
        out_shape=[jax.ShapeDtypeStruct(qp.shape, q.dtype),
                   jax.ShapeDtypeStruct((batch, heads, q_pad), jnp.float32)
                   if alpha is not None else None],
        compiler_params=compiler_params,
        interpret=interpret,
        name="region_attention_bwd_dq_gpu",
    )(*inputs)

    # dk, dv: grid (kv blocks, batch, kv heads); the program walks the group's q heads.
    bq, bk = block_q_dkv, block_k_dkv
    q_spec = pl.BlockSpec((None, q_pad, group, d_pad), lambda i, b, h: (b, 0, h, 0))
    kv_spec = pl.BlockSpec((None, bk, None, d_pad), lambda i, b, h: (b, i, h, 0))
    key_spec = pl.BlockSpec((None, bk), lambda i, b, h: (b, i))
    row_spec = pl.BlockSpec((None, q_pad), lambda i, b, h: (b, 0))
    stat_spec = pl.BlockSpec((None, group, q_pad), lambda i, b, h: (b, h, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, block_q=bq, block_k=bk, num_q_blocks=q_pad // bq,
                          group=group, **statics),
        grid=(kv_pad // bk, batch, kv_heads),
        in_specs=[q_spec, kv_spec, kv_spec, q_spec, stat_spec, stat_spec, key_spec,
                  row_spec if qseg is not None else None,
                  key_spec if kseg is not None else None,
                  row_spec if alpha is not None else None],
        out_specs=[kv_spec, kv_spec],
        out_shape=[jax.ShapeDtypeStruct(kp.shape, k.dtype), jax.ShapeDtypeStruct(vp.shape, v.dtype)],
        compiler_params=compiler_params,
        interpret=interpret,
        name="region_attention_bwd_dkv_gpu",
    )(*inputs)

    dq = dq[:, :q_len, :, :head_dim]
    dk, dv = dk[:, :kv_len, :, :head_dim], dv[:, :kv_len, :, :head_dim]
    if dalpha is not None:
        dalpha = jnp.sum(dalpha[:, :, :q_len], axis=1).astype(visual_scale.dtype)
    return dq, dk, dv, dalpha


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(static, q, k, v, masks):
    return _forward(q, k, v, **masks, **dict(static))


def _attention_fwd(static, q, k, v, masks):
    outs, lse = _forward(q, k, v, **masks, **dict(static), with_lse=True)
    return outs, (q, k, v, masks, outs[0], lse)


def _attention_bwd(static, res, cts):
    q, k, v, masks, out, lse = res
    # The masses carry no gradient: only the cotangent of out is used.
    dq, dk, dv, dalpha = _backward(q, k, v, out, lse, cts[0], **masks, **dict(static))
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
    block_q_dq: int = 64,
    block_k_dq: int = 32,
    block_q_dkv: int = 32,
    block_k_dkv: int = 64,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Pallas (Triton) region attention; same contract as `reference.attention_reference`.

    q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D] (Hq % Hkv == 0); masks bool [B, Lk]; segment ids
    int [B, Lq] / [B, Lk]; visual_scale f32 [B, Lq].
    Returns out [B, Lq, Hq, D] (q.dtype), region_mass / visual_mass f32 [B, Hq, Lq] | None.
    Differentiable in q, k, v and visual_scale (Pallas backward kernels); the masses are
    stop-gradient. Tile sizes, all powers of two >= 16: block_q/block_k for the forward,
    block_q_dq/block_k_dq for the dq kernel, block_q_dkv/block_k_dkv for the dk/dv kernel.
    interpret: None = compile on GPU, run the generic Pallas interpreter elsewhere (logged
    once). num_warps: Triton warps per program (None: 4 for head_dim <= 64, else 8).
    Raises ValueError for segment ids given alone, visual_scale without visual_mask, or a
    block size that is not a power of two >= 16.
    """
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("q_segment_ids and kv_segment_ids must be given together")
    if visual_scale is not None and visual_mask is None:
        raise ValueError("visual_scale needs visual_mask (which keys are visual)")
    blocks = dict(block_q=block_q, block_k=block_k, block_q_dq=block_q_dq, block_k_dq=block_k_dq,
                  block_q_dkv=block_q_dkv, block_k_dkv=block_k_dkv)
    for name, blk in blocks.items():
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
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads {q.shape[2]} not a multiple of key/value heads {k.shape[2]}")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
        if interpret:
            _log_once("region_attention: backend 'pallas_gpu' off GPU runs in the Pallas "
                      "interpreter (slow; for tests)")
    # A tuple of pairs is hashable, as nondiff_argnums need.
    static = (("causal", bool(causal)), ("softmax_scale", softmax_scale), *blocks.items(),
              ("interpret", bool(interpret)), ("num_warps", num_warps))
    out, region, visual = _attention(static, q, k, v, masks)
    stop = lax.stop_gradient
    return out, None if region is None else stop(region), None if visual is None else stop(visual)
