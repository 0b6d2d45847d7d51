"""Truncated completions (no EOS within max_new_tokens): the loss mask drops them when asked."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sif_jax.rl.grpo import GRPOConfig, Rollout
from sif_jax.rl.loss import grpo_loss, loss_denominator, mask_truncated
from sif_jax.rl.types import RolloutBatch
from tests.rl.test_loss import _batch, _numpy_loss

TRUNCATED = np.array([True, False, False, True, False, False])


def test_mask_truncated_zeroes_whole_rows():
    mask = np.arange(7)[None] < np.array([7, 3, 1, 5, 0, 6])[:, None]
    out = np.asarray(mask_truncated(jnp.asarray(mask), jnp.asarray(TRUNCATED)))
    np.testing.assert_array_equal(out, mask & ~TRUNCATED[:, None])
    assert out.dtype == bool


@pytest.mark.parametrize("reduction", ["sequence_mean", "token_mean"])
def test_masked_truncated_rows_add_no_loss_and_no_gradient(reduction):
    logp, old, ref, adv, mask = _batch()
    loss_mask = mask_truncated(jnp.asarray(mask), jnp.asarray(TRUNCATED))
    loss, metrics = grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), loss_mask,
                              eps_low=0.2, eps_high=0.28, beta=0.04, reduction=reduction)
    # NumPy re-derivation over the finished rows only
    keep = ~TRUNCATED
    expected = _numpy_loss(logp[keep], old[keep], ref[keep], adv[keep], mask[keep], reduction)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(metrics["num_tokens"]) == mask[keep].sum()
    assert float(loss_denominator(loss_mask, reduction)) == (
        (mask[keep].sum(1) > 0).sum() if reduction == "sequence_mean" else mask[keep].sum())
    safe_logp = jnp.asarray(np.where(mask, logp, -2.0))
    grads = jax.grad(lambda lp: grpo_loss(lp, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), loss_mask,
                                          eps_low=0.2, eps_high=0.28, beta=0.04, reduction=reduction)[0])(safe_logp)
    grads = np.asarray(grads)
    assert (grads[TRUNCATED] == 0).all()
    assert (np.abs(grads[keep & (mask.sum(1) > 0)]).sum(1) > 0).all()


def test_grpo_config_default_and_rollout_defaults():
    assert GRPOConfig().mask_truncated_completions is False
    mask = jnp.ones((2, 3), bool)
    r = Rollout.create({}, jnp.zeros((2, 3), jnp.int32), mask, jnp.zeros((2, 3)), None, jnp.zeros(2))
    assert np.asarray(r.truncated).tolist() == [False, False] and r.loss_mask is mask


def test_rollout_batch_checks_the_truncated_shape():
    n = 2
    common = dict(group_size=2, prompt_ids=["a", "a"], texts=["x", "y"], answers=["1", "1"], choices=[None] * n,
                  target_boxes=[np.zeros((0, 4))] * n, depth_maps=[None] * n, completion_mask=np.ones((n, 3), bool),
                  entropies=np.zeros((n, 3)), region_mass=np.zeros((n, 3)), visual_mass=np.zeros((n, 3)),
                  region_tokens=np.zeros(n, np.int32), visual_tokens=np.zeros(n, np.int32))
    assert RolloutBatch(**common, truncated=np.array([True, False])).truncated.tolist() == [True, False]
    with pytest.raises(ValueError, match=r"RolloutBatch.truncated has shape \(3,\); expected \[2\]"):
        RolloutBatch(**common, truncated=np.zeros(3, bool))


def test_config_field_is_validated_and_reaches_grpo_settings():
    from configs.grpo import get_config
    from sif_jax.run_config import validate_config
    from sif_jax.train import grpo_settings

    c = get_config()
    assert c.grpo.mask_truncated_completions is False
    validate_config(c)
    assert grpo_settings(c)[0].mask_truncated_completions is False
    c.grpo.mask_truncated_completions = True
    assert grpo_settings(c)[0].mask_truncated_completions is True
    d = c.to_dict()
    d["grpo"]["mask_truncated_completions"] = "yes"  # e.g. a hand-written config dict
    with pytest.raises(ValueError, match=r"config.grpo.mask_truncated_completions='yes': must be True or False"):
        validate_config(ml_collections.ConfigDict(d))


def test_shared_prompts_and_candidates_are_validated_and_reach_grpo_settings():
    from configs.grpo import get_config
    from sif_jax.run_config import validate_config
    from sif_jax.train import grpo_settings

    c = get_config()
    grpo = grpo_settings(c)[0]
    assert grpo.share_prompts is True and grpo.prompt_group == c.grpo.group_size
    assert grpo.sampling.candidates == c.grpo.sampling_candidates == 256
    c.grpo.share_prompts = False
    c.grpo.sampling_candidates = 0
    grpo = grpo_settings(c)[0]
    assert grpo.prompt_group == 1 and grpo.sampling.candidates == 0
    for key, value, message in (("share_prompts", "yes", "must be True or False"),
                                ("sampling_candidates", -1, "must be >= 0")):
        d = get_config().to_dict()
        d["grpo"][key] = value
        with pytest.raises(ValueError, match=rf"config.grpo.{key}={value!r}: {message}"):
            validate_config(ml_collections.ConfigDict(d))
