"""The Pallas Triton kernel, run on CPU in the generic Pallas interpreter, against the reference."""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.kernels.region_attention.gpu import region_attention_gpu
from sif_jax.kernels.region_attention.reference import attention_reference
from tests.kernels.cases import Case, assert_matches_reference

gpu16 = functools.partial(region_attention_gpu, block_q=16, block_k=16, interpret=True)


@pytest.mark.parametrize("case", [
    Case(q_len=40, kv_len=40, alpha=True, segments=True, left_pad=True),
    Case(q_len=1, kv_len=45, kv_valid=True, alpha=True, heads=4, kv_heads=1, head_dim=80),
    Case(q_len=24, kv_len=37, causal=False, masses=False, heads=2, kv_heads=2),
], ids=["causal_gqa_alpha_segments_leftpad", "decode_d80", "noncausal_cross"])
def test_matches_reference_with_grads(case):
    assert_matches_reference(gpu16, case)


def test_unsupported_head_dim_falls_back_to_reference(caplog):
    q, k, v, kw = Case(batch=1, q_len=8, kv_len=8, heads=1, kv_heads=1, head_dim=264).make()
    with caplog.at_level(logging.WARNING):
        got = region_attention_gpu(q, k, v, **kw)
    want = attention_reference(q, k, v, **kw)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_rejects_bad_block():
    q = jnp.zeros((1, 8, 1, 16))
    with pytest.raises(ValueError, match="block_k"):
        region_attention_gpu(q, q, q, causal=True, block_k=24)


@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_lowers_to_triton(head_dim):
    """The Triton lowering (Python side) succeeds for bf16 at the model's head dims."""
    b, n = 1, 256
    q = jnp.zeros((b, n, 4, head_dim), jnp.bfloat16)
    k = jnp.zeros((b, n, 2, head_dim), jnp.bfloat16)
    ones = jnp.ones((b, n), bool)
    kw = dict(causal=True, visual_mask=ones, region_mask=ones, kv_valid=ones,
              visual_scale=jnp.ones((b, n), jnp.float32))
    fn = functools.partial(region_attention_gpu, interpret=False, **kw)
    try:
        text = jax.jit(fn).trace(q, k, k).lower(lowering_platforms=("cuda",)).as_text()
    except RuntimeError as e:  # a jaxlib without the Triton dialect
        pytest.skip(f"cannot lower for cuda here: {e}")
    assert "triton" in text.lower()
