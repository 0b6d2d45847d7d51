"""SAYO region-attention reward (top-k entropy queries, TAS) and the SAYO format reward."""

import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.rl.rewards_attention import region_attention_reward, sayo_format_score, top_entropy_mask


def _call(ent, region, visual, mask, rt, vt, top_fraction=0.3):
    r, t = region_attention_reward(
        jnp.asarray(ent, jnp.float32), jnp.asarray(region, jnp.float32), jnp.asarray(visual, jnp.float32),
        jnp.asarray(mask, bool), jnp.asarray(rt, jnp.int32), jnp.asarray(vt, jnp.int32), top_fraction=top_fraction,
    )
    return np.asarray(r), np.asarray(t)


def test_uniform_attention_is_neutral():
    rng = np.random.default_rng(0)
    visual = rng.uniform(0.2, 0.9, (3, 12))
    rt, vt = np.array([4, 10, 1]), np.array([100, 50, 7])
    region = visual * (rt / vt)[:, None]  # attention spread evenly over all visual tokens
    r, t = _call(rng.uniform(size=(3, 12)), region, visual, np.ones((3, 12), bool), rt, vt)
    np.testing.assert_allclose(r, 0.0, atol=1e-5)
    np.testing.assert_allclose(t, 0.5, atol=1e-5)


def test_all_attention_in_region():
    visual = np.full((1, 10), 0.6)
    r, t = _call(np.ones((1, 10)), visual, visual, np.ones((1, 10), bool), [4], [400])
    x = 100.0  # (0.6/4) / (0.6/400)
    assert r[0] == pytest.approx((x**2 - 1) / (x**2 + 1), rel=1e-5) and r[0] > 0.999
    assert t[0] == pytest.approx(x**2 / (1 + x**2), rel=1e-5)


@pytest.mark.parametrize("length", list(range(0, 31)))
def test_top_k_count(length):
    mask = np.arange(32)[None] < length
    ent = np.random.default_rng(length).uniform(size=(1, 32))
    got = int(np.asarray(top_entropy_mask(jnp.asarray(ent), jnp.asarray(mask), 0.3)).sum())
    assert got == (0 if length == 0 else max(1, (3 * (length - 1)) // 10))


def test_top_k_picks_highest_entropy_real_tokens_only():
    # len = 11 -> k = 3. Padding at positions 11.. has huge entropy and must be ignored.
    t = 14
    mask = np.arange(t)[None] < 11
    ent = np.array([[0.1, 5.0, 0.2, 4.0, 0.3, 0.4, 3.0, 0.5, 0.6, 0.7, 2.9, 1e9, 1e9, np.nan]])
    q = np.asarray(top_entropy_mask(jnp.asarray(ent), jnp.asarray(mask), 0.3))
    np.testing.assert_array_equal(np.flatnonzero(q[0]), [1, 3, 6])
    # Region attention only on the chosen tokens: the reward must see a = region/R exactly there.
    region = np.where(q, 0.5, 0.0) + np.where(~mask, 100.0, 0.0)
    visual = np.full((1, t), 0.5)
    r, _ = _call(ent, region, visual, mask, [5], [50])
    x = (0.5 / 5) / (0.5 / 50)
    assert r[0] == pytest.approx(np.tanh(np.log(x)), rel=1e-5)
    # And the complement: attention only on non-chosen tokens gives a ≈ 0 -> reward ≈ -1.
    r2, t2 = _call(ent, np.where(mask & ~q, 0.5, 0.0), visual, mask, [5], [50])
    assert r2[0] == pytest.approx(-1.0, abs=1e-5) and t2[0] == pytest.approx(0.0, abs=1e-5)


def test_degenerate_samples():
    ones = np.ones((3, 4))
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
    r, t = _call(ones, ones * 0.2, ones, mask, [0, 5, 5], [10, 0, 10])
    np.testing.assert_array_equal(r, 0.0)
    np.testing.assert_array_equal(t, 0.5)


def test_tanh_log_equals_rational_form():
    rng = np.random.default_rng(1)
    ent, region, visual = rng.uniform(size=(3, 5, 9))
    mask = np.ones((5, 9), bool)
    rt, vt = rng.integers(1, 20, 5), rng.integers(20, 200, 5)
    r, t = _call(ent, region, visual, mask, rt, vt)
    q = np.asarray(top_entropy_mask(jnp.asarray(ent), jnp.asarray(mask), 0.3))
    a = (region * q).sum(1) / q.sum(1) / rt
    v = (visual * q).sum(1) / q.sum(1) / vt
    x = (a + 1e-8) / (v + 1e-8)
    np.testing.assert_allclose(r, (x**2 - 1) / (x**2 + 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t, x**2 / (1 + x**2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "text, length, expected",
    [
        ("<think>x</think><answer>B</answer>", 80, 1.0),
        ("<answer>B</answer>", 60, 1.0),
        ("<answer>B</answer>", 100, 1.0),
        ("<answer>B</answer>", 101, 0.6 * 100 / 101),
        ("<answer>B</answer>", 120, 0.5),
        ("<answer>B</answer>", 30, 0.3),
        ("<answer>B</answer>", 0, 0.0),
        ("no tags at all", 80, 0.0),
        ("<answer>unclosed", 80, 0.0),
        (None, 80, 0.0),
    ],
)
def test_sayo_format(text, length, expected):
    assert sayo_format_score(text, length) == pytest.approx(expected)
