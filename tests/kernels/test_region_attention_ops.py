"""Dispatch, argument checks, the XLA path and mass properties (reference and kernel)."""

from __future__ import annotations

import functools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from sif_jax.kernels.region_attention import BACKENDS, attention
from sif_jax.kernels.region_attention.reference import attention_reference, single_query_attention
from sif_jax.kernels.region_attention.tpu import region_attention_tpu
from tests.kernels.cases import Case


def test_default_backend_on_cpu_is_reference():
    q, k, v, kw = Case().make()
    got, want = attention(q, k, v, **kw), attention_reference(q, k, v, **kw)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_agrees_through_attention(backend):
    q, k, v, kw = Case(batch=1, q_len=20, kv_len=20, left_pad=True, segments=True,
                       heads=2, kv_heads=1).make(4)
    got = attention(q, k, v, backend=backend, **kw)
    want = attention_reference(q, k, v, **kw)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("case", [
    Case(q_len=17, kv_len=17, masses=False),
    Case(q_len=5, kv_len=23, masses=False, kv_valid=True, segments=True),
    Case(q_len=23, kv_len=23, masses=False, left_pad=True),
], ids=["causal_square", "causal_cross_masks", "left_pad_empty_rows"])
def test_xla_backend_matches_reference(case):
    q, k, v, kw = case.make(2)
    got = attention(q, k, v, backend="xla", **kw).out
    np.testing.assert_allclose(got, attention_reference(q, k, v, **kw)[0], atol=2e-5)


def test_kernel_matches_jax_dot_product_attention():
    q, k, v, _ = Case(batch=1, q_len=40, kv_len=40, heads=4, kv_heads=2).make(5)
    want = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    out, region, visual = region_attention_tpu(q, k, v, causal=True, block_q=16, block_k=16)
    assert region is None and visual is None
    np.testing.assert_allclose(out, want, atol=2e-5)


def test_masses_have_no_gradient():
    q, k, v, kw = Case(batch=1, q_len=8, kv_len=8, heads=1, kv_heads=1).make()
    g = jax.grad(lambda q: jnp.sum(attention(q, k, v, **kw).region_mass))(q)
    assert not np.any(np.asarray(g))


_q = jnp.zeros((2, 8, 4, 16))
_k = jnp.zeros((2, 12, 2, 16))
_m = jnp.ones((2, 12), bool)


@pytest.mark.parametrize("kwargs, match", [
    (dict(q=_q[0]), r"q\.shape"),
    (dict(k=_k[:, :, :, :8], v=_k[:, :, :, :8]), r"k\.shape"),
    (dict(k=jnp.zeros((2, 12, 3, 16)), v=jnp.zeros((2, 12, 3, 16))), "multiple"),
    (dict(v=_k.astype(jnp.bfloat16)), "dtypes"),
    (dict(kv_valid=_m[:, :5]), r"kv_valid\.shape"),
    (dict(region_mask=jnp.ones((2, 12), jnp.float32)), r"region_mask\.dtype"),
    (dict(visual_scale=jnp.ones((2, 8))), "visual_scale needs visual_mask"),
    (dict(visual_mask=_m, visual_scale=jnp.ones((2, 12))), r"visual_scale\.shape"),
    (dict(q_segment_ids=jnp.zeros((2, 8), jnp.int32)), "together"),
    (dict(softmax_scale=-1.0), "softmax_scale"),
    (dict(backend="cuda"), "backend"),
])
def test_validation_names_the_argument(kwargs, match):
    args = dict(q=_q, k=_k, v=_k, causal=True) | kwargs
    with pytest.raises(ValueError, match=match):
        attention(**args)


# --------------------------------------------------------------------------- properties

L = 24


def _masses(fn, q, k, v, visual, region, valid, alpha, causal):
    _, r, vm = fn(q, k, v, causal=causal, visual_mask=visual, region_mask=region,
                  kv_valid=valid, visual_scale=alpha)
    return r, vm


@functools.cache
def _kernel(causal):
    return jax.jit(functools.partial(
        _masses, functools.partial(region_attention_tpu, block_q=8, block_k=16), causal=causal))


_reference = jax.jit(functools.partial(_masses, attention_reference), static_argnames="causal")

bits = st.lists(st.booleans(), min_size=L, max_size=L)


def _check_properties(fn, seed, visual, region, valid, alpha_on, causal):
    visual = np.array(visual)
    region = np.array(region) & visual  # region is a subset of the visual keys
    valid = np.array(valid)
    rng = np.random.default_rng(seed)
    k = jnp.asarray(rng.standard_normal((1, L, 1, 8), np.float32))
    v = jnp.asarray(rng.standard_normal((1, L, 1, 8), np.float32))
    alpha = jnp.asarray(np.where(alpha_on, 1.7, 1.0) * np.ones((1, L), np.float32))
    masks = [jnp.asarray(x[None]) for x in (visual, region, valid)]

    q = jnp.asarray(3 * rng.standard_normal((1, L, 2, 8), np.float32))
    r, vm = map(np.asarray, fn(q, k, v, *masks, alpha, causal))
    assert np.all(r <= vm + 1e-6) and np.all(vm <= 1 + 1e-6) and np.all(r >= 0)

    # q = 0: every logit is 0 (alpha * 0 too), so attention is uniform over visible keys.
    r, vm = map(np.asarray, fn(jnp.zeros_like(q), k, v, *masks, alpha, causal))
    seen = np.broadcast_to(valid[None, :], (L, L))
    if causal:
        seen = seen & np.tri(L, L, dtype=bool)
    count = seen.sum(1)
    denom = np.maximum(count, 1)
    want_r = np.where(count > 0, (seen & region[None]).sum(1) / denom, 0.0)
    want_v = np.where(count > 0, (seen & visual[None]).sum(1) / denom, 0.0)
    np.testing.assert_allclose(r, np.broadcast_to(want_r, r.shape), atol=1e-6)
    np.testing.assert_allclose(vm, np.broadcast_to(want_v, vm.shape), atol=1e-6)


_strategy = dict(seed=st.integers(0, 2**31 - 1), visual=bits, region=bits, valid=bits,
                 alpha_on=st.booleans(), causal=st.booleans())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**_strategy)
def test_mass_properties_reference(seed, visual, region, valid, alpha_on, causal):
    _check_properties(_reference, seed, visual, region, valid, alpha_on, causal)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**_strategy)
def test_mass_properties_kernel(seed, visual, region, valid, alpha_on, causal):
    _check_properties(lambda *a: _kernel(a[-1])(*a[:-1]), seed, visual, region, valid,
                      alpha_on, causal)


@pytest.mark.parametrize("case", [
    Case(q_len=1, kv_len=37, heads=4, kv_heads=2, kv_valid=True),
    Case(q_len=1, kv_len=37, heads=6, kv_heads=2, left_pad=True, alpha=True),
    Case(q_len=1, kv_len=37, heads=2, kv_heads=2, segments=True, masses=False),
    Case(q_len=1, kv_len=9, heads=4, kv_heads=1, kv_valid=True, left_pad=True, causal=False),
], ids=["gqa_cache_slots", "alpha_left_pad", "segments", "mqa"])
def test_a_decode_step_query_matches_the_reference(case):
    """One query per row (a decode step) takes `single_query_attention` on the CPU: equal to the
    reference's output, masses and gradients (fp32)."""
    q, k, v, kw = case.make(7)
    valid = np.asarray(kw.get("kv_valid", np.ones(k.shape[:2], bool)))
    kw = dict(kw, kv_valid=jnp.asarray(valid).at[0].set(False)) if "kv_valid" in kw else kw  # an empty row
    got, want = attention(q, k, v, backend="reference", **kw), attention_reference(q, k, v, **kw)
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v, **kw)[0] ** 2)

    on_cpu = functools.partial(attention, backend="reference")
    g_got = jax.grad(functools.partial(loss, on_cpu), (0, 1, 2))(q, k, v)
    g_want = jax.grad(functools.partial(loss, attention_reference), (0, 1, 2))(q, k, v)
    for a, b in zip(g_got, g_want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_single_query_attention_rejects_longer_queries():
    q, k, v, _ = Case(q_len=2, kv_len=8).make()
    with pytest.raises(ValueError, match="q_len must be 1, got 2"):
        single_query_attention(q, k, v)
