"""Region attention as a Pallas Mosaic TPU kernel (flash attention + region/visual masses).

Forward: grid (batch, q heads, q blocks, kv blocks); only the kv axis is sequential. Online
softmax with f32 VMEM scratch (m, l, acc) reset on the first kv block, plus two running sums
(region, visual) rescaled exactly like the denominator l, so

    region_mass[b, h, q] = sum_{k in region} softmax(logits)[q, k]

is ready at the last kv block without an [Lq, Lk] matrix anywhere.

Masking: per-key flags (valid | visual | region bits, int32 [B, Lk]), optional segment ids and
bottom-right causal masking, applied element-wise with a large finite MASK_VALUE (never -inf,
so fully masked rows give 0 and no NaN). Blocks with no visible pair are skipped via a block
table (scalar-prefetched into SMEM) built on the host side from the masks (causal, padding,
segment-id intervals); the kv index_map is redirected to the last block that ran, so a
skipped block is never copied into VMEM.

GQA: the kv index_map sends q head h to kv head h // group; K/V are never repeated.

AdaptVis: visual_scale [B, Lq] (alpha) multiplies the scaled logits of visual keys. Rows with
alpha == 1 are unchanged (the multiply is exact), so no per-row branch is needed.

Backward (custom_vjp): from the saved log-sum-exp, a dq kernel (grid ..., kv sequential; also
accumulates d alpha) and a dk/dv kernel with grid (batch, kv heads, kv blocks, group * q blocks)
that sums the group's q heads in its VMEM accumulators (no [B, Hq, Lk, D] temporaries). With
z = c * s, c = alpha on visual keys else 1: dz = p * (dp - D), ds = c * dz, and
d alpha_q = sum_{visual k} dz * s. The masses get zero cotangent.

Per-row outputs (masses, the saved log-sum-exp, d alpha) are stored compactly, q rows in the
lane dimension: an array [B, H, nq, 1, bq] whose (1, bq) blocks equal the array's last two dims,
so they satisfy Mosaic's (8, 128) block rule for any block_q (a (None, None, bq) block of
[B, H, Lq] would not: its second-minor block dim would be 1 != H). The kernels keep these
statistics as (bq, 128) lane-broadcast f32 scratch during the kv loop (the per-row rescaling
by exp(m_prev - m_new) is a (bq, 1) column, natural in that layout) and relayout them once per
q block at the last kv step: the columns are packed into one (bq, 128) tile (lanes 0, 8, 16)
and transposed together, so one XLU transpose serves all of them and every row read back is
sublane-tile aligned. The reshape [B, H, nq, 1, bq] -> [B, H, Lq_p] outside costs at most a
copy of the compact array. Before, each of these was a lane-broadcast [B, H, Lq, 128] f32
array: 128x the bytes.
The backward broadcasts the compact lse back to [B, H, Lq_p, 128] for its two kernels (as it
does for D = rowsum(dO * O)); that array is transient, only the compact one is a residual.

Status: developed on CPU. Tested in TPU interpret mode (numerics, race detection) and the
Python side of the Mosaic lowering for a TPU v5e target (tests/kernels); never run on a real
TPU yet, so Mosaic compilation (including the (bq, 128) -> (128, bq) f32 transpose of the
per-row outputs), block-size tuning and timings are pending. Known costs to revisit on
hardware: the per-query inputs (alpha, q segment ids) still enter lane-broadcast as
[B, Lq, 128] (no head axis, so B * Lq * 512 bytes each); the backward's transient lse / D
arrays are [B, H, Lq, 128] f32; the two block tables live in SMEM and grow as B * nq * nk
int32 each.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from sif_jax.kernels.region_attention import common
from sif_jax.kernels.region_attention.common import MASK_VALUE, REGION, VALID, VISUAL

LANES = 128
SUBLANES = 8
NT = (((1,), (1,)), ((), ()))  # a @ b.T
TN = (((0,), (0,)), ((), ()))  # a.T @ b


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static (hashable) description of one call; nondiff argument of the custom_vjp."""

    causal: bool
    scale: float
    offset: int  # Lk - Lq of the unpadded problem: causal is bottom-right aligned
    block_q: int  # forward tiles
    block_k: int
    block_q_dq: int  # backward dq kernel tiles
    block_k_dq: int
    block_q_dkv: int  # backward dk/dv kernel tiles
    block_k_dkv: int
    group: int
    has_seg: bool
    has_alpha: bool
    want_region: bool
    want_visual: bool
    interpret: Any


# ----------------------------------------------------------------------------- shared math


def _logits(st: _Config, q, k, flags_ref, qseg_ref, kseg_ref, alpha_ref, q_start, k_start):
    """Scaled logits of one block and its masks.

    Returns s [bq, bk] (before alpha), z [bq, bk] (after alpha, masked with MASK_VALUE),
    visible, visual_key (bool [bq, bk] / [1, bk]), region_key [1, bk], alpha [bq, 1] | None.
    """
    s = lax.dot_general(q, k, NT, preferred_element_type=jnp.float32) * st.scale
    bq, bk = s.shape
    flags = flags_ref[0:1, :]  # [1, bk]; rows of the (8, bk) block are copies
    visible = (flags & VALID) != 0
    visual_key = (flags & VISUAL) != 0
    region_key = (flags & REGION) != 0
    alpha = None
    z = s
    if st.has_alpha:
        alpha = alpha_ref[...][:, :1]  # [bq, 1]
        z = jnp.where(visual_key, s * alpha, s)
    if st.causal:
        q_pos = q_start + st.offset + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
        k_pos = k_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
        visible = visible & (k_pos <= q_pos)
    if st.has_seg:
        visible = visible & (qseg_ref[...][:, :1] == kseg_ref[0:1, :])
    visible = jnp.broadcast_to(visible, (bq, bk))
    z = jnp.where(visible, z, MASK_VALUE)
    return s, z, visible, visual_key, region_key, alpha


def _lanes(x: jax.Array) -> jax.Array:
    return jnp.broadcast_to(x, (x.shape[0], LANES))


def _store_rows(pairs) -> None:
    """Writes per-row columns (f32 [bq, 1]) into lane-major (1, bq) output refs (None: skip).

    Why relayout once here instead of accumulating in a (1, bq) scratch: the running sums are
    rescaled by a (bq, 1) column at every kv step, so a lane-major accumulator would need that
    column transposed at every step; this is one (bq, 128) transpose per q block for up to
    three statistics. Column i goes to lane 8 * i, i.e. row 8 * i of the transpose, the first
    row of a sublane tile (no sublane shift when it is stored).
    """
    pairs = [(col, ref) for col, ref in pairs if ref is not None]
    if not pairs:
        return
    assert len(pairs) * SUBLANES <= LANES
    bq = pairs[0][0].shape[0]
    lane = lax.broadcasted_iota(jnp.int32, (bq, LANES), 1)
    packed = jnp.zeros((bq, LANES), jnp.float32)
    for i, (col, _) in enumerate(pairs):
        packed = jnp.where(lane == i * SUBLANES, col, packed)
    rows = jnp.transpose(packed)  # [LANES, bq]
    for i, (_, ref) in enumerate(pairs):
        ref[...] = rows[i * SUBLANES:i * SUBLANES + 1, :]


def _compact(x: jax.Array) -> jax.Array:
    """[B, H, nq, 1, bq] (the kernels' per-row output layout) -> [B, H, nq * bq]."""
    return x.reshape(*x.shape[:2], -1)


def _row_stat_out(st: _Config, batch: int, heads: int, nq: int, q_map):
    """ShapeDtypeStruct and BlockSpec of a compact per-row f32 output [B, H, nq, 1, bq]."""
    shape = jax.ShapeDtypeStruct((batch, heads, nq, 1, st.block_q), jnp.float32)

    def index_map(*idx):
        b, h, i = q_map(*idx)[:3]
        return (b, h, i, 0, 0)

    return shape, pl.BlockSpec((None, None, None, 1, st.block_q), index_map)


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(run_ref, fetch_ref, q_ref, k_ref, v_ref, flags_ref, qseg_ref, kseg_ref, alpha_ref,
                o_ref, lse_ref, region_ref, visual_ref,
                m_sc, l_sc, acc_sc, r_sc, vis_sc, *, st: _Config, nq: int, nk: int):
    del fetch_ref  # used by the index maps only
    b, qi, ki = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(ki == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, MASK_VALUE, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)
        if r_sc is not None:
            r_sc[...] = jnp.zeros(r_sc.shape, jnp.float32)
        if vis_sc is not None:
            vis_sc[...] = jnp.zeros(vis_sc.shape, jnp.float32)

    @pl.when(run_ref[(b * nq + qi) * nk + ki] != 0)
    def _body():
        v = v_ref[...]
        _, z, visible, visual_key, region_key, _ = _logits(
            st, q_ref[...], k_ref[...], flags_ref, qseg_ref, kseg_ref, alpha_ref,
            qi * st.block_q, ki * st.block_k)
        m_prev = m_sc[...][:, :1]
        m_new = jnp.maximum(m_prev, jnp.max(z, axis=1, keepdims=True))
        corr = jnp.exp(m_prev - m_new)
        # where(): masked entries of a row whose max is still MASK_VALUE would give exp(0) = 1.
        p = jnp.where(visible, jnp.exp(z - m_new), 0.0)
        m_sc[...] = _lanes(m_new)
        l_sc[...] = _lanes(corr * l_sc[...][:, :1] + jnp.sum(p, axis=1, keepdims=True))
        acc_sc[...] = corr * acc_sc[...] + jnp.dot(
            p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        # The masses are extra "denominators" restricted to a key set: same rescaling as l.
        if r_sc is not None:
            r_blk = jnp.sum(jnp.where(region_key, p, 0.0), axis=1, keepdims=True)
            r_sc[...] = _lanes(corr * r_sc[...][:, :1] + r_blk)
        if vis_sc is not None:
            v_blk = jnp.sum(jnp.where(visual_key, p, 0.0), axis=1, keepdims=True)
            vis_sc[...] = _lanes(corr * vis_sc[...][:, :1] + v_blk)

    @pl.when(ki == nk - 1)
    def _finish():
        denom = l_sc[...][:, :1]
        l_safe = jnp.where(denom == 0.0, 1.0, denom)  # a row with no visible key: out 0, masses 0
        inv = 1.0 / l_safe
        o_ref[...] = (acc_sc[...] * inv).astype(o_ref.dtype)
        _store_rows([
            (m_sc[...][:, :1] + jnp.log(l_safe), lse_ref),
            (r_sc[...][:, :1] * inv if r_sc is not None else None, region_ref),
            (vis_sc[...][:, :1] * inv if vis_sc is not None else None, visual_ref),
        ])


def _row_specs(st: _Config, q_map, kv_map):
    """BlockSpecs for the per-key/per-query side arrays (flags, segment ids, alpha)."""
    bq, bk = st.block_q, st.block_k
    flags = pl.BlockSpec((None, SUBLANES, bk), kv_map)
    qseg = pl.BlockSpec((None, bq, LANES), q_map) if st.has_seg else None
    kseg = pl.BlockSpec((None, SUBLANES, bk), kv_map) if st.has_seg else None
    alpha = pl.BlockSpec((None, bq, LANES), q_map) if st.has_alpha else None
    return flags, qseg, kseg, alpha


def _fwd_call(st: _Config, run, fetch, q, k, v, flags, qseg, kseg, alpha, *, save_lse: bool):
    batch, heads, q_len, head_dim = q.shape
    nq, nk = q_len // st.block_q, k.shape[2] // st.block_k
    bq, bk = st.block_q, st.block_k

    def q_map(b, h, i, j, run_ref, fetch_ref):
        return (b, h, i, 0)

    def kv_map(b, h, i, j, run_ref, fetch_ref):
        return (b, h // st.group, fetch_ref[(b * nq + i) * nk + j], 0)

    def row_q_map(b, h, i, j, run_ref, fetch_ref):
        return (b, i, 0)

    def row_kv_map(b, h, i, j, run_ref, fetch_ref):
        return (b, 0, fetch_ref[(b * nq + i) * nk + j])

    flags_s, qseg_s, kseg_s, alpha_s = _row_specs(st, row_q_map, row_kv_map)
    in_specs = [
        pl.BlockSpec((None, None, bq, head_dim), q_map),
        pl.BlockSpec((None, None, bk, head_dim), kv_map),
        pl.BlockSpec((None, None, bk, head_dim), kv_map),
        flags_s, qseg_s, kseg_s, alpha_s,
    ]
    stat, stat_spec = _row_stat_out(st, batch, heads, nq, q_map)
    want = (save_lse, st.want_region, st.want_visual)
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)] + [stat if w else None for w in want]
    out_specs = [pl.BlockSpec((None, None, bq, head_dim), q_map)] + [
        stat_spec if w else None for w in want]
    row = pltpu.VMEM((bq, LANES), jnp.float32)
    scratch = [row, row, pltpu.VMEM((bq, head_dim), jnp.float32),
               row if st.want_region else None, row if st.want_visual else None]
    kernel = functools.partial(_fwd_kernel, st=st, nq=nq, nk=nk)
    out, lse, region, visual = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(batch, heads, nq, nk), in_specs=in_specs,
            out_specs=out_specs, scratch_shapes=scratch),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=st.interpret,
        name="region_attention_fwd",
    )(run, fetch, q, k, v, flags, qseg, kseg, alpha)
    return out, lse, region, visual


# ----------------------------------------------------------------------------- backward


def _dq_kernel(run_ref, fetch_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref,
               flags_ref, qseg_ref, kseg_ref, alpha_ref, dq_ref, da_ref, dq_sc, da_sc,
               *, st: _Config, nq: int, nk: int):
    del fetch_ref
    b, qi, ki = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(ki == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)
        if da_sc is not None:
            da_sc[...] = jnp.zeros(da_sc.shape, jnp.float32)

    @pl.when(run_ref[(b * nq + qi) * nk + ki] != 0)
    def _body():
        k, v, do = k_ref[...], v_ref[...], do_ref[...]
        s, z, visible, visual_key, _, alpha = _logits(
            st, q_ref[...], k, flags_ref, qseg_ref, kseg_ref, alpha_ref,
            qi * st.block_q, ki * st.block_k)
        p = jnp.where(visible, jnp.exp(z - lse_ref[...][:, :1]), 0.0)
        dp = lax.dot_general(do, v, NT, preferred_element_type=jnp.float32)
        dz = p * (dp - di_ref[...][:, :1])
        ds = dz
        if alpha is not None:
            ds = jnp.where(visual_key, dz * alpha, dz)
            da_sc[...] = _lanes(da_sc[...][:, :1] + jnp.sum(
                jnp.where(visual_key, dz * s, 0.0), axis=1, keepdims=True))
        dq_sc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    @pl.when(ki == nk - 1)
    def _finish():
        dq_ref[...] = (dq_sc[...] * st.scale).astype(dq_ref.dtype)
        if da_ref is not None:
            _store_rows([(da_sc[...][:, :1], da_ref)])


def _dkv_kernel(run_ref, fetch_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref,
                flags_ref, qseg_ref, kseg_ref, alpha_ref, dk_ref, dv_ref, dk_sc, dv_sc,
                *, st: _Config, nq: int, nk: int):
    del fetch_ref
    b, ki, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    qi = j % nq

    @pl.when(j == 0)
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

    @pl.when(run_ref[(b * nk + ki) * nq + qi] != 0)
    def _body():
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        _, z, visible, visual_key, _, alpha = _logits(
            st, q, k, flags_ref, qseg_ref, kseg_ref, alpha_ref, qi * st.block_q, ki * st.block_k)
        p = jnp.where(visible, jnp.exp(z - lse_ref[...][:, :1]), 0.0)
        dv_sc[...] += lax.dot_general(p.astype(do.dtype), do, TN,
                                      preferred_element_type=jnp.float32)
        dp = lax.dot_general(do, v, NT, preferred_element_type=jnp.float32)
        dz = p * (dp - di_ref[...][:, :1])
        ds = jnp.where(visual_key, dz * alpha, dz) if alpha is not None else dz
        dk_sc[...] += lax.dot_general(ds.astype(q.dtype), q, TN,
                                      preferred_element_type=jnp.float32)

    @pl.when(j == st.group * nq - 1)
    def _finish():
        dk_ref[...] = (dk_sc[...] * st.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _bwd_call(st: _Config, runs, res, d_out):
    q, k, v, flags, qseg, kseg, alpha, out, lse = res
    batch, heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    # D_q = <do_q, o_q>: the softmax-Jacobian row term; zero for fully masked rows (o = 0).
    di = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    di = jnp.broadcast_to(di, (batch, heads, q_len, LANES))
    # The compact lse residual, lane-broadcast for the two kernels (transient, like di).
    lse = jnp.broadcast_to(_compact(lse)[..., None], (batch, heads, q_len, LANES))
    params = pltpu.CompilerParams(
        dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))
    _, run, run_dkv = runs

    # dq (and d alpha): kv sequential, like the forward; its own tiles.
    st = dataclasses.replace(st, block_q=st.block_q_dq, block_k=st.block_k_dq)
    bq, bk = st.block_q, st.block_k
    nq, nk = q_len // bq, kv_len // bk
    fetch = common.fetch_index(run)
    def q_map(b, h, i, j, run_ref, fetch_ref):
        return (b, h, i, 0)

    def kv_map(b, h, i, j, run_ref, fetch_ref):
        return (b, h // st.group, fetch_ref[(b * nq + i) * nk + j], 0)

    def row_q_map(b, h, i, j, run_ref, fetch_ref):
        return (b, i, 0)

    def row_kv_map(b, h, i, j, run_ref, fetch_ref):
        return (b, 0, fetch_ref[(b * nq + i) * nk + j])

    q_spec = pl.BlockSpec((None, None, bq, head_dim), q_map)
    kv_spec = pl.BlockSpec((None, None, bk, head_dim), kv_map)
    stat_spec = pl.BlockSpec((None, None, bq, LANES), q_map)
    row = pltpu.VMEM((bq, LANES), jnp.float32)
    da_shape, da_spec = _row_stat_out(st, batch, heads, nq, q_map)
    dq, dalpha = pl.pallas_call(
        functools.partial(_dq_kernel, st=st, nq=nq, nk=nk),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(batch, heads, nq, nk),
            in_specs=[q_spec, kv_spec, kv_spec, q_spec, stat_spec, stat_spec,
                      *_row_specs(st, row_q_map, row_kv_map)],
            out_specs=[q_spec, da_spec if st.has_alpha else None],
            scratch_shapes=[pltpu.VMEM((bq, head_dim), jnp.float32),
                            row if st.has_alpha else None]),
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), da_shape if st.has_alpha else None],
        compiler_params=params, interpret=st.interpret, name="region_attention_dq",
    )(run.reshape(-1), fetch.reshape(-1), q, k, v, d_out, lse, di, flags, qseg, kseg, alpha)

    # dk/dv: grid (b, kv head, kv block, group * q blocks); the inner axis walks the group's
    # q heads and their q blocks, so GQA sums happen in VMEM. Its own tiles.
    st = dataclasses.replace(st, block_q=st.block_q_dkv, block_k=st.block_k_dkv)
    bq, bk = st.block_q, st.block_k
    nq, nk = q_len // bq, kv_len // bk
    run_t = jnp.swapaxes(run_dkv, 1, 2)  # [B, nk, nq]
    fetch_t = common.fetch_index(run_t)

    def tq_map(b, h, i, j, run_ref, fetch_ref):
        return (b, h * st.group + j // nq, fetch_ref[(b * nk + i) * nq + j % nq], 0)

    def tkv_map(b, h, i, j, run_ref, fetch_ref):
        return (b, h, i, 0)

    def trow_q_map(b, h, i, j, run_ref, fetch_ref):
        return (b, fetch_ref[(b * nk + i) * nq + j % nq], 0)

    def trow_kv_map(b, h, i, j, run_ref, fetch_ref):
        return (b, 0, i)

    tq_spec = pl.BlockSpec((None, None, bq, head_dim), tq_map)
    tkv_spec = pl.BlockSpec((None, None, bk, head_dim), tkv_map)
    tstat_spec = pl.BlockSpec((None, None, bq, LANES), tq_map)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, st=st, nq=nq, nk=nk),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(batch, kv_heads, nk, st.group * nq),
            in_specs=[tq_spec, tkv_spec, tkv_spec, tq_spec, tstat_spec, tstat_spec,
                      *_row_specs(st, trow_q_map, trow_kv_map)],
            out_specs=[tkv_spec, tkv_spec],
            scratch_shapes=[pltpu.VMEM((bk, head_dim), jnp.float32),
                            pltpu.VMEM((bk, head_dim), jnp.float32)]),
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params, interpret=st.interpret, name="region_attention_dkv",
    )(run_t.reshape(-1), fetch_t.reshape(-1), q, k, v, d_out, lse, di, flags, qseg, kseg, alpha)
    if dalpha is not None:
        dalpha = jnp.sum(_compact(dalpha), axis=1)  # [B, H, Lq_p] -> [B, Lq_p]: alpha is per row
        # alpha entered lane-broadcast [B, Lq_p, LANES]; spreading the cotangent evenly makes
        # the broadcast's transpose (a sum over lanes) return it exactly (LANES is 2^7).
        dalpha = jnp.broadcast_to(dalpha[..., None], alpha.shape).astype(alpha.dtype) / LANES
    return dq, dk, dv, dalpha


# ----------------------------------------------------------------------------- custom_vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(st, runs, q, k, v, alpha, flags, qseg, kseg):
    out, _, region, visual = _fwd(st, runs, q, k, v, alpha, flags, qseg, kseg, save_lse=False)
    return out, region, visual


def _fwd(st, runs, q, k, v, alpha, flags, qseg, kseg, *, save_lse):
    run = runs[0]
    fetch = common.fetch_index(run)
    return _fwd_call(st, run.reshape(-1), fetch.reshape(-1), q, k, v, flags, qseg, kseg, alpha,
                     save_lse=save_lse)


def _attention_fwd(st, runs, q, k, v, alpha, flags, qseg, kseg):
    out, lse, region, visual = _fwd(st, runs, q, k, v, alpha, flags, qseg, kseg, save_lse=True)
    return (out, region, visual), (runs, q, k, v, alpha, flags, qseg, kseg, out, lse)


def _attention_bwd(st, res, cts):
    runs, q, k, v, alpha, flags, qseg, kseg, out, lse = res
    d_out = cts[0]  # region/visual masses carry no gradient
    dq, dk, dv, dalpha = _bwd_call(st, runs, (q, k, v, flags, qseg, kseg, alpha, out, lse), d_out)
    return (None,) * len(runs), dq, dk, dv, dalpha, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


# ----------------------------------------------------------------------------- public wrapper


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes (query rows, key columns) of the three kernels.

    Each is a multiple of 8; on a real TPU a key tile must be a multiple of 128 unless it
    covers the whole padded key length. Lengths need not be multiples of the tiles: the
    wrapper pads (to a common multiple of the tiles it uses) and masks the padded keys.
    """

    block_q: int = 512  # forward
    block_k: int = 512
    block_q_dq: int = 512  # backward, dq (+ d alpha) kernel
    block_k_dq: int = 512
    block_q_dkv: int = 512  # backward, dk/dv kernel
    block_k_dkv: int = 512

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            size = getattr(self, field.name)
            if not isinstance(size, int) or size <= 0 or size % SUBLANES:
                raise ValueError(f"BlockSizes.{field.name}={size!r}; expected a positive multiple of {SUBLANES}")


# Per-generation starting points, keyed by `device_kind`. Untuned on hardware: chips with the
# larger scoped VMEM (v5e, v6e: 128 MiB physical) get longer key tiles in the forward; the
# backward keeps 512 x 512, whose f32 [bq, bk] logits / probabilities / dS temporaries (3 MiB)
# fit every generation's default scoped VMEM limit.
DEFAULT_BLOCK_SIZES: dict[str, BlockSizes] = {
    "TPU v4": BlockSizes(),
    "TPU v5 lite": BlockSizes(block_k=1024),
    "TPU v5": BlockSizes(),
    "TPU v6 lite": BlockSizes(block_k=1024),
}


def target_device_kind() -> str | None:
    """`device_kind` of the TPU being compiled for, or None when it is not a TPU.

    Mosaic reads the chip generation from the default device, so a program compiled ahead of
    time for a TPU topology from another host sets `jax.default_device(topology.devices[0])`;
    that device decides here too. Otherwise the first local device, if it is a TPU.
    """
    device = jax.config.jax_default_device
    if device is None or isinstance(device, str):
        if jax.default_backend() != "tpu":
            return None
        device = jax.devices()[0]
    return device.device_kind if getattr(device, "platform", None) == "tpu" else None


def default_block_sizes(device_kind: str | None = None) -> BlockSizes:
    """The tile sizes for a chip generation (`device_kind`, default: `target_device_kind()`)."""
    kind = device_kind if device_kind is not None else target_device_kind()
    return DEFAULT_BLOCK_SIZES.get(kind or "", BlockSizes())


def _fit_tiles(tiles: tuple[int, ...], length: int, unit: int) -> tuple[int, ...]:
    """Shrinks tiles longer than the sequence so that the largest divides by all the others.

    First each tile is capped at the length rounded up to `unit`; if the capped tiles no longer
    divide each other (say 640 and 512), each is halved instead while its half still covers
    the length, so the padded length (a common multiple) stays small.
    """
    cap = common.round_up(length, unit)
    capped = tuple(min(t, cap) for t in tiles)
    if all(max(capped) % t == 0 for t in capped):
        return capped
    halved = []
    for t in tiles:
        while t // 2 >= cap and (t // 2) % unit == 0:
            t //= 2
        halved.append(t)
    return tuple(halved)


def _fit_block_sizes(sizes: BlockSizes, q_len: int, kv_len: int) -> BlockSizes:
    bq, bq_dq, bq_dkv = _fit_tiles((sizes.block_q, sizes.block_q_dq, sizes.block_q_dkv), q_len, SUBLANES)
    bk, bk_dq, bk_dkv = _fit_tiles((sizes.block_k, sizes.block_k_dq, sizes.block_k_dkv), kv_len, LANES)
    return BlockSizes(bq, bk, bq_dq, bk_dq, bq_dkv, bk_dkv)


def _default_interpret() -> Any:
    # Off-TPU the Mosaic kernel can only run in the TPU interpreter (slow, for tests).
    return None if jax.default_backend() == "tpu" else pltpu.InterpretParams()


def region_attention_tpu(
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
    block_q: int | None = None,
    block_k: int | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: Any = "auto",
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Pallas TPU region attention; same contract as `reference.attention_reference`.

    Args:
      q: [B, Lq, Hq, D]; k, v: [B, Lk, Hkv, D]; masks bool [B, Lk]; segment ids int [B, L];
        visual_scale float [B, Lq].
      block_sizes: the forward / dq / dk-dv tiles; default `default_block_sizes()` for the
        chip being compiled for. Tiles longer than the sequence shrink to cover it.
      block_q, block_k: one tile pair for all three kernels (tests); overrides block_sizes.
      interpret: "auto" (default) = compiled on TPU, `pltpu.InterpretParams()` elsewhere;
        None/False = always compile; or any value accepted by `pallas_call(interpret=...)`,
        e.g. `pltpu.InterpretParams(detect_races=True)`.

    Returns:
      out [B, Lq, Hq, D] (q.dtype); region_mass, visual_mass f32 [B, Hq, Lq] or None.

    Raises:
      ValueError: a tile size that is not a positive multiple of 8; inconsistent masks.
    """
    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("q_segment_ids and kv_segment_ids must be given together")
    if visual_scale is not None and visual_mask is None:
        raise ValueError("visual_scale needs visual_mask (which keys are visual)")
    if interpret == "auto":
        interpret = _default_interpret()
    interpret = interpret or False
    sizes = block_sizes if block_sizes is not None else default_block_sizes()
    if block_q is not None or block_k is not None:
        bq = sizes.block_q if block_q is None else block_q
        bk = sizes.block_k if block_k is None else block_k
        sizes = BlockSizes(bq, bk, bq, bk, bq, bk)
    sizes = _fit_block_sizes(sizes, q_len, kv_len)
    q_tile = math.lcm(sizes.block_q, sizes.block_q_dq, sizes.block_q_dkv)
    k_tile = math.lcm(sizes.block_k, sizes.block_k_dq, sizes.block_k_dkv)
    q_pad, kv_pad = common.round_up(q_len, q_tile), common.round_up(kv_len, k_tile)
    st = _Config(
        causal=bool(causal),
        scale=float(head_dim**-0.5 if softmax_scale is None else softmax_scale),
        offset=kv_len - q_len, block_q=sizes.block_q, block_k=sizes.block_k,
        block_q_dq=sizes.block_q_dq, block_k_dq=sizes.block_k_dq,
        block_q_dkv=sizes.block_q_dkv, block_k_dkv=sizes.block_k_dkv, group=heads // kv_heads,
        has_seg=q_segment_ids is not None, has_alpha=visual_scale is not None,
        want_region=region_mask is not None, want_visual=visual_mask is not None,
        interpret=interpret,
    )

    # [B, L, H, D] -> [B, H, L, D] so a (block, D) tile of one head is contiguous.
    def heads_major(x, length):
        return common.pad_axis(jnp.swapaxes(x, 1, 2), 2, length)

    qt, kt, vt = heads_major(q, q_pad), heads_major(k, kv_pad), heads_major(v, kv_pad)
    flags = common.key_flags(batch, kv_len, kv_pad, kv_valid=kv_valid, visual_mask=visual_mask,
                             region_mask=region_mask)
    qseg = kseg = qseg_rows = kseg_rows = alpha = None
    if st.has_seg:
        qseg = common.pad_axis(q_segment_ids.astype(jnp.int32), 1, q_pad, mode="edge")
        kseg = common.pad_axis(kv_segment_ids.astype(jnp.int32), 1, kv_pad)
        qseg_rows = jnp.broadcast_to(qseg[:, :, None], (batch, q_pad, LANES))
        kseg_rows = jnp.broadcast_to(kseg[:, None, :], (batch, SUBLANES, kv_pad))
    if st.has_alpha:
        alpha = common.pad_axis(visual_scale.astype(jnp.float32), 1, q_pad, 1.0)
        alpha = jnp.broadcast_to(alpha[:, :, None], (batch, q_pad, LANES))
    # One block table per kernel (they differ when the tiles do); small, [B, nq, nk] int32.
    tables = {}
    for bq, bk in ((st.block_q, st.block_k), (st.block_q_dq, st.block_k_dq), (st.block_q_dkv, st.block_k_dkv)):
        if (bq, bk) not in tables:
            tables[bq, bk] = common.block_tables(
                flags, qseg, kseg, block_q=bq, block_k=bk, num_q_blocks=q_pad // bq, causal=st.causal,
                offset=st.offset).astype(jnp.int32)
    runs = (tables[st.block_q, st.block_k], tables[st.block_q_dq, st.block_k_dq],
            tables[st.block_q_dkv, st.block_k_dkv])
    flag_rows = jnp.broadcast_to(flags[:, None, :], (batch, SUBLANES, kv_pad))
    out, region, visual = _attention(st, runs, qt, kt, vt, alpha, flag_rows, qseg_rows, kseg_rows)
    out = jnp.swapaxes(out[:, :, :q_len], 1, 2)

    def mass(x):
        return None if x is None else lax.stop_gradient(_compact(x)[:, :, :q_len])

    return out, mass(region), mass(visual)
