"""The equality checks every family's shared-prompt tests make: the loss gradient with
`share_prompts` on vs off, and the scoring pass with group_size=G vs 1 (fp32, atol 1e-5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sif_jax.infer.sampler import SamplingConfig
from sif_jax.infer.scoring import score
from sif_jax.rl.grpo import GRPOConfig, loss_grads
from sif_jax.rl.types import Rollout


def assert_shared_loss_gradient_equals_full(params, prompt, completion, mask, *, config, group_size):
    """Asserts `loss_grads` with share_prompts=True equals share_prompts=False (numerator and every
    gradient leaf); returns [(leaf path, full-pass gradient leaf)] for the callers' own checks."""
    rows = completion.shape[0]
    rng = np.random.default_rng(2)
    old = score(params, prompt, completion, mask, config=config, temperature=0.7, vocab_chunk=256).logprobs
    old = old + jnp.asarray(rng.normal(0, 0.05, old.shape), jnp.float32) * mask
    ref = old + jnp.asarray(rng.normal(0, 0.05, old.shape), jnp.float32) * mask
    advantages = jnp.asarray(rng.standard_normal(rows), jnp.float32)
    out = {}
    for share in (False, True):
        grpo = GRPOConfig(group_size=group_size, beta=0.04, share_prompts=share, vocab_chunk=256,
                          sampling=SamplingConfig(temperature=0.7))
        rollout = Rollout.create(prompt, completion, mask, old, ref, advantages, loss_mask=mask)
        out[share] = loss_grads(params, rollout, jnp.float32(rows), config=config, grpo=grpo)
    (g_full, (num_full, _, _)), (g_shared, (num_shared, _, _)) = out[False], out[True]
    np.testing.assert_allclose(float(num_shared), float(num_full), atol=1e-5)
    leaves = [(jax.tree_util.keystr(path), a) for path, a in jax.tree_util.tree_leaves_with_path(g_full)]
    for (name, a), b in zip(leaves, jax.tree.leaves(g_shared), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, err_msg=name)
    return leaves


def assert_shared_scores_equal_full(run, group_size):
    """`run(group_size=...)` -> `Scores`: G equals 1 in log-probs, entropies and both masses, and
    the masses are not all zero."""
    full, shared = run(group_size=1), run(group_size=group_size)
    for name in ("logprobs", "entropies", "region_mass", "visual_mass"):
        a, b = np.asarray(getattr(shared, name)), np.asarray(getattr(full, name))
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)
    assert np.abs(np.asarray(full.visual_mass)).sum() > 0 and np.abs(np.asarray(full.region_mass)).sum() > 0
