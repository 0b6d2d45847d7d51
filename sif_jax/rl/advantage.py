"""Group-normalised GRPO advantages (METHODS §4): A = (r - mean_g) / (std_g + eps).

Samples of one prompt are contiguous rows, [g * G, (g + 1) * G), as in `RolloutBatch`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

ADV_EPS = 1e-4  # SIFThinker / TRL: (r - mean) / (std + 1e-4)


@partial(jax.jit, static_argnames=("group_size", "scale_by_std", "eps"))
def group_advantages(
    rewards: jax.Array,
    group_size: int,
    *,
    scale_by_std: bool = True,
    eps: float = ADV_EPS,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Advantages normalised within each group of `group_size` contiguous samples.

    Args:
      rewards: float [N] total reward per sample, N = prompts * group_size.
      group_size: G (static).
      scale_by_std: True → (r - mean_g) / (std_g + eps) (GRPO); False → r - mean_g
        (Dr.GRPO-style, mean-only).
      eps: added to the std, 1e-4 as in the SIFThinker code.

    The std is the *unbiased* sample std (ddof = 1), as torch's `.std()` that TRL and the
    SIFThinker code use. With G = 1 the unbiased std is undefined; we take it as 0 (the
    advantage is then 0 anyway since r - mean = 0), so no NaN.

    Returns:
      advantages: float32 [N].
      metrics: reward_mean, reward_std (mean over groups of std_g), zero_std_fraction (fraction
        of groups whose rewards are all equal, i.e. groups that give no learning signal),
        advantage_abs_mean.
    """
    n = rewards.shape[0]
    if n % group_size:
        raise ValueError(f"group_size={group_size} does not divide N={n}")
    r = rewards.astype(jnp.float32).reshape(-1, group_size)
    mean = r.mean(axis=1, keepdims=True)
    centred = r - mean
    if group_size > 1:
        std = jnp.sqrt(jnp.sum(centred**2, axis=1, keepdims=True) / (group_size - 1))
    else:
        std = jnp.zeros_like(mean)
    adv = centred / (std + eps) if scale_by_std else centred
    # "All equal" is tested exactly on max == min rather than std == 0, which can be a tiny
    # non-zero number from float rounding.
    zero_std = jnp.max(r, axis=1) == jnp.min(r, axis=1)
    metrics = {
        "reward_mean": r.mean(),
        "reward_std": std.mean(),
        "zero_std_fraction": zero_std.astype(jnp.float32).mean(),
        "advantage_abs_mean": jnp.abs(adv).mean(),
    }
    return adv.reshape(n), metrics
