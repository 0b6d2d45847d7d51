"""The Pallas Triton kernels against the reference: compiled on a GPU, else in the generic Pallas interpreter.

On a GPU (benchmarks/gpu_check.sh) the same tests compile the kernels for real; run them there with
JAX_DEFAULT_MATMUL_PRECISION=highest, since Triton's default fp32 dot is TF32.

Gradients (dq, dk, dv, d visual_scale) of the Pallas backward kernels are compared with
`jax.grad` of `reference.attention_reference` (fp32) by `cases.assert_matches_reference`.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.kernels.region_attention.gpu import region_attention_gpu
from sif_jax.kernels.region_attention.reference import attention_reference, key_mask
from tests.kernels.cases import Case, assert_matches_reference, run_with_grads

BLOCKS16 = dict(block_q=16, block_k=16, block_q_dq=16, block_k_dq=16, block_q_dkv=16, block_k_dkv=16)
INTERPRET = jax.default_backend() != "gpu"
gpu16 = functools.partial(region_attention_gpu, interpret=INTERPRET, **BLOCKS16)


@pytest.mark.parametrize("case", [
    Case(q_len=40, kv_len=40, alpha=True, segments=True, left_pad=True),
    Case(q_len=1, kv_len=45, kv_valid=True, alpha=True, heads=4, kv_heads=1, head_dim=80),
    Case(q_len=24, kv_len=37, causal=False, masses=False, heads=2, kv_heads=2),
], ids=["causal_gqa_alpha_segments_leftpad", "decode_d80", "noncausal_cross"])
def test_matches_reference_with_grads(case):
    assert_matches_reference(gpu16, case)


# Small problems for the backward kernels (the interpreter is slow): each case is one
# feature on top of a GQA base (4 q heads over 2 kv heads) with odd lengths.
GRAD_CASES = {
    "causal_gqa": Case(batch=1, q_len=21, kv_len=21, masses=False),
    "noncausal_gqa": Case(batch=1, q_len=19, kv_len=23, causal=False, masses=False),
    "causal_cross_alpha": Case(batch=1, q_len=13, kv_len=29, alpha=True),
    "segments": Case(batch=2, q_len=20, kv_len=20, segments=True, masses=False),
    "leftpad_fully_masked_rows": Case(batch=2, q_len=24, kv_len=24, left_pad=True, alpha=True),
    "causal_q_longer_than_kv": Case(batch=1, q_len=20, kv_len=11, alpha=True),
    "decode_gqa4": Case(batch=2, q_len=1, kv_len=33, kv_valid=True, heads=4, kv_heads=1,
                        alpha=True),
    "mha_d24_alpha_segments": Case(batch=1, q_len=17, kv_len=17, heads=2, kv_heads=2,
                                   head_dim=24, segments=True, alpha=True),
}


@pytest.mark.parametrize("case", GRAD_CASES.values(), ids=GRAD_CASES.keys())
def test_backward_matches_reference_grad(case):
    assert_matches_reference(gpu16, case)


def test_backward_with_separate_block_sizes():
    """Backward tiles differ from the forward's and from each other (q/kv padded to the largest)."""
    fn = functools.partial(region_attention_gpu, interpret=INTERPRET, block_q=16, block_k=32,
                           block_q_dq=32, block_k_dq=16, block_q_dkv=16, block_k_dkv=32)
    assert_matches_reference(fn, Case(batch=1, q_len=19, kv_len=35, alpha=True, segments=True))


def test_fully_masked_rows_get_zero_gradient():
    case = Case(batch=2, q_len=24, kv_len=24, left_pad=True, alpha=True)
    q, k, v, kw = case.make(3)
    seen = np.asarray(key_mask(2, 24, 24, causal=True, q_segment_ids=None, kv_segment_ids=None,
                               kv_valid=kw["kv_valid"]))[:, 0].any(-1)  # [B, Lq]
    assert not seen.all(), "the case must have fully masked rows"
    (out, _, _), (dq, _, _, dalpha) = run_with_grads(gpu16, q, k, v, kw)
    blind = ~seen
    assert np.all(np.asarray(out)[blind] == 0)
    assert np.all(np.asarray(dq)[blind] == 0)
    assert np.all(np.asarray(dalpha)[blind] == 0)


def test_bf16_backward_close_to_fp32_reference():
    """bf16 inputs: the kernels' grads (bf16, f32 accumulation) within bf16 rounding of the f32 oracle."""
    q, k, v, kw = Case(batch=1, q_len=21, kv_len=21, alpha=True).make()
    alpha = kw.pop("visual_scale")
    weights = jnp.cos(jnp.arange(q.shape[-1], dtype=jnp.float32))

    def grads(fn, dtype):
        def loss(q, k, v, alpha):
            out = fn(q, k, v, visual_scale=alpha, **kw)[0]
            return jnp.sum(out.astype(jnp.float32) * weights)

        return jax.grad(loss, argnums=(0, 1, 2, 3))(q.astype(dtype), k.astype(dtype), v.astype(dtype), alpha)

    got, want = grads(gpu16, jnp.bfloat16), grads(attention_reference, jnp.float32)
    for name, a, b in zip(("dq", "dk", "dv", "dalpha"), got, want, strict=True):
        assert a.dtype == (jnp.float32 if name == "dalpha" else jnp.bfloat16), name
        np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=2e-2 * float(np.max(np.abs(b))),
                                   err_msg=name)


def _walk(jaxpr, pallas_names: list[str], shapes: list[tuple[int, ...]]) -> None:
    """Names of the pallas_calls and shapes of all values outside the kernels."""
    for eqn in jaxpr.eqns:
        shapes.extend(tuple(getattr(x.aval, "shape", ())) for x in eqn.outvars)
        if eqn.primitive.name == "pallas_call":
            pallas_names.append(str(getattr(eqn.params["name"], "name", eqn.params["name"])))
            continue
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    _walk(sub, pallas_names, shapes)


def test_backward_is_pallas_and_never_materialises_the_attention_matrix():
    lq, lk = 24, 37
    q, k, v, kw = Case(batch=1, q_len=lq, kv_len=lk, alpha=True, segments=True).make()
    alpha = kw.pop("visual_scale")

    def loss(q, k, v, alpha):
        return jnp.sum(gpu16(q, k, v, visual_scale=alpha, **kw)[0])

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, alpha).jaxpr
    names: list[str] = []
    shapes: list[tuple[int, ...]] = []
    _walk(jaxpr, names, shapes)
    assert any("bwd_dq" in n for n in names), names
    assert any("bwd_dkv" in n for n in names), names
    q_sizes, k_sizes = {lq, 32}, {lk, 48}  # unpadded and padded to 16
    big = [s for s in shapes if q_sizes & set(s) and k_sizes & set(s)]
    assert not big, f"[.., Lq, .., Lk]-shaped values in the grad: {big}"


def test_unsupported_head_dim_falls_back_to_reference(caplog):
    q, k, v, kw = Case(batch=1, q_len=8, kv_len=8, heads=1, kv_heads=1, head_dim=264).make()
    with caplog.at_level(logging.WARNING):
        got = region_attention_gpu(q, k, v, **kw)
    want = attention_reference(q, k, v, **kw)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["block_k", "block_q_dq", "block_k_dkv"])
def test_rejects_bad_block(name):
    q = jnp.zeros((1, 8, 1, 16))
    with pytest.raises(ValueError, match=name):
        region_attention_gpu(q, q, q, causal=True, **{name: 24})


@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_lowers_to_triton(head_dim):
    """The Triton lowering (Python side) of forward and backward succeeds for bf16."""
    b, n = 1, 256
    q = jnp.zeros((b, n, 4, head_dim), jnp.bfloat16)
    k = jnp.zeros((b, n, 2, head_dim), jnp.bfloat16)
    ones = jnp.ones((b, n), bool)
    seg = jnp.zeros((b, n), jnp.int32)
    kw = dict(causal=True, visual_mask=ones, region_mask=ones, kv_valid=ones, q_segment_ids=seg,
              kv_segment_ids=seg)

    def loss(q, k, v, alpha):
        out = region_attention_gpu(q, k, v, interpret=False, visual_scale=alpha, **kw)[0]
        return jnp.sum(out.astype(jnp.float32))

    grad = jax.grad(loss, argnums=(0, 1, 2, 3))
    try:
        lowered = jax.jit(grad).trace(q, k, k, jnp.ones((b, n), jnp.float32)).lower(
            lowering_platforms=("cuda",))
    except RuntimeError as e:  # a jaxlib without the Triton dialect
        pytest.skip(f"cannot lower for cuda here: {e}")
    text = lowered.as_text()
    assert "triton" in text.lower()
    for name in ("region_attention_fwd_gpu", "region_attention_bwd_dq_gpu",
                 "region_attention_bwd_dkv_gpu"):
        assert name in text
