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


@pytest.mark.parametrize("value", [0.35, 0.1, 1 / 3, 2.7, -0.45, 1e-3])
@pytest.mark.parametrize("g", [2, 3, 7, 8, 16])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_zero_variance_group_is_exactly_zero(value, g, scale_by_std):
    """G bit-identical float32 rewards: advantages, reward_std exactly 0, reward_mean the value itself."""
    v = np.float32(value)
    r = np.concatenate([np.full(g, v, np.float32), np.arange(g, dtype=np.float32)])  # + one varied group
    adv, metrics = group_advantages(jnp.asarray(r), g, scale_by_std=scale_by_std)
    adv = np.asarray(adv)
    np.testing.assert_array_equal(adv[:g], np.zeros(g, np.float32))
    assert float(metrics["zero_std_fraction"]) == 0.5
    ref = _numpy_advantages(r[g:], g) if scale_by_std else r[g:] - r[g:].mean()
    np.testing.assert_allclose(adv[g:], ref, rtol=1e-5, atol=1e-6)
    only, m1 = group_advantages(jnp.full((g,), v), g, scale_by_std=scale_by_std)
    np.testing.assert_array_equal(np.asarray(only), np.zeros(g, np.float32))
    assert float(m1["reward_std"]) == 0.0
    assert float(m1["advantage_abs_mean"]) == 0.0
    assert np.float32(m1["reward_mean"]) == v


def test_nearly_equal_group_keeps_its_signal():
    """One ulp apart is a real difference: advantages are ±, summing to ~0 (not all one sign)."""
    v = np.float32(0.35)
    r = np.full(8, v, np.float32)
    r[0] = np.nextafter(v, np.float32(1))
    adv = np.asarray(group_advantages(jnp.asarray(r), 8)[0])
    assert adv[0] > 0 and (adv[1:] < 0).all()
    np.testing.assert_allclose(adv, _numpy_advantages(r, 8), rtol=1e-3, atol=1e-6)
