"""group_advantages against an independent NumPy re-derivation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.rl.advantage import group_advantages


def _numpy_advantages(rewards: np.ndarray, g: int, eps: float = 1e-4) -> np.ndarray:
    out = np.zeros_like(rewards, dtype=np.float64)
    for start in range(0, len(rewards), g):
        grp = rewards[start : start + g].astype(np.float64)
        std = grp.std(ddof=1) if g > 1 else 0.0
        out[start : start + g] = (grp - grp.mean()) / (std + eps)
    return out


def test_matches_numpy_and_counts_flat_groups():
    rng = np.random.default_rng(0)
    r = rng.uniform(0, 6, size=12).astype(np.float32)
    r[4:8] = 2.5  # an all-equal group
    adv, metrics = group_advantages(jnp.asarray(r), 4)
    np.testing.assert_allclose(np.asarray(adv), _numpy_advantages(r, 4), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(adv[4:8]), 0.0)
    assert float(metrics["zero_std_fraction"]) == pytest.approx(1 / 3)


def test_unbiased_std_value():
    adv, _ = group_advantages(jnp.array([0.0, 1.0]), 2)
    # ddof=1: std = sqrt(0.5) -> A = ±0.5 / (0.7071 + 1e-4)
    np.testing.assert_allclose(np.asarray(adv), [-0.5 / (np.sqrt(0.5) + 1e-4), 0.5 / (np.sqrt(0.5) + 1e-4)], rtol=1e-6)


def test_group_size_one_is_finite_and_zero():
    adv, metrics = jax.jit(group_advantages, static_argnums=1)(jnp.array([1.0, 3.0, -2.0]), 1)
    np.testing.assert_array_equal(np.asarray(adv), 0.0)
    assert float(metrics["zero_std_fraction"]) == 1.0


def test_mean_only_switch():
    r = jnp.array([1.0, 2.0, 3.0, 10.0, 10.0, 13.0])
    adv, _ = group_advantages(r, 3, scale_by_std=False)
    np.testing.assert_allclose(np.asarray(adv), [-1, 0, 1, -1, -1, 2], atol=1e-6)


def test_bad_group_size_raises():
    with pytest.raises(ValueError):
        group_advantages(jnp.zeros(5), 2)
