"""Random attention problems and comparison helpers for the region-attention tests."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sif_jax.kernels.region_attention.reference import attention_reference


@dataclasses.dataclass(frozen=True)
class Case:
    """Shape and mask options of one problem; `make` draws the arrays."""

    batch: int = 2
    q_len: int = 40
    kv_len: int = 40
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    causal: bool = True
    segments: bool = False
    left_pad: bool = False  # kv_valid False for a prefix: gives fully masked rows when causal
    kv_valid: bool = False  # kv_valid False for a suffix (empty cache slots)
    masses: bool = True
    alpha: bool = False

    def make(self, seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
        rng = np.random.default_rng(seed)
        b, lq, lk = self.batch, self.q_len, self.kv_len
        q = rng.standard_normal((b, lq, self.heads, self.head_dim), np.float32)
        k = rng.standard_normal((b, lk, self.kv_heads, self.head_dim), np.float32)
        v = rng.standard_normal((b, lk, self.kv_heads, self.head_dim), np.float32)
        kw: dict = {"causal": self.causal}
        valid = np.ones((b, lk), bool)
        if self.left_pad:
            valid &= np.arange(lk)[None] >= rng.integers(0, lk // 3, (b, 1))
        if self.kv_valid:
            valid &= np.arange(lk)[None] < rng.integers(lk // 2, lk, (b, 1))
        if self.left_pad or self.kv_valid:
            kw["kv_valid"] = jnp.asarray(valid)
        if self.segments:
            # Packed sequences: ids rise along the sequence, ends aligned for causal packing.
            kw["q_segment_ids"] = jnp.asarray(np.sort(rng.integers(0, 3, (b, lq)), axis=1))
            kw["kv_segment_ids"] = jnp.asarray(np.sort(rng.integers(0, 3, (b, lk)), axis=1))
        if self.masses:
            visual = rng.random((b, lk)) < 0.6
            kw["visual_mask"] = jnp.asarray(visual)
            kw["region_mask"] = jnp.asarray(visual & (rng.random((b, lk)) < 0.5))
        if self.alpha:
            alpha = np.where(rng.random((b, lq)) < 0.5, rng.uniform(0.3, 2.0, (b, lq)), 1.0)
            kw["visual_scale"] = jnp.asarray(alpha, jnp.float32)
            kw.setdefault("visual_mask", jnp.asarray(rng.random((b, lk)) < 0.6))
        return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), kw


def run_with_grads(fn, q, k, v, kw, seed: int = 1):
    """(out, region, visual) and grads of <out, random cotangent> w.r.t. q, k, v (and alpha)."""
    alpha = kw.get("visual_scale")
    rest = {n: x for n, x in kw.items() if n != "visual_scale"}

    def f(q, k, v, alpha):
        return fn(q, k, v, visual_scale=alpha, **rest)

    primals, vjp = jax.vjp(f, q, k, v, alpha)
    out, region, visual = primals
    cot = jnp.asarray(np.random.default_rng(seed).standard_normal(out.shape, np.float32))
    zeros = lambda x: None if x is None else jnp.zeros_like(x)
    grads = vjp((cot, zeros(region), zeros(visual)))
    return primals, grads


def assert_matches_reference(fn, case: Case, *, seed: int = 0, grads: bool = True,
                             atol: float = 2e-5) -> None:
    q, k, v, kw = case.make(seed)
    if grads:
        got, got_g = run_with_grads(fn, q, k, v, kw)
        want, want_g = run_with_grads(attention_reference, q, k, v, kw)
    else:
        got, want = fn(q, k, v, **kw), attention_reference(q, k, v, **kw)
        got_g = want_g = (None,) * 4
    for name, a, b in zip(("out", "region_mass", "visual_mass"), got, want, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.shape == b.shape, (name, a.shape, b.shape)
            assert np.all(np.isfinite(a)), name
            np.testing.assert_allclose(a, b, atol=atol, rtol=1e-5, err_msg=name)
    for name, a, b in zip(("dq", "dk", "dv", "dalpha"), got_g, want_g, strict=True):
        if b is None:
            continue
        scale = float(np.max(np.abs(b))) + 1.0
        np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=1e-4, err_msg=name)
