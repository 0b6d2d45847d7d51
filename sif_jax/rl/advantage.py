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

    Zero-variance groups are exact: the statistics are taken of r - r_0 (r_0 the group's first
    reward), which is exactly 0 for bit-identical rewards, and a group whose max equals its min
    gets mean_g = r_0, std_g = 0 and advantages exactly 0 (a float32 mean of eight 0.35s is not
    0.35, and dividing that residue by std + eps would give ~3e-4 advantages of one sign).

    Returns:
      advantages: float32 [N].
      metrics: reward_mean (mean over groups of mean_g), reward_std (mean over groups of std_g),
        zero_std_fraction (fraction of groups whose rewards are all equal, i.e. groups that give
        no learning signal), advantage_abs_mean.
    """
    n = rewards.shape[0]
    if n % group_size:
        raise ValueError(f"group_size={group_size} does not divide N={n}")
    r = rewards.astype(jnp.float32).reshape(-1, group_size)
    # "All equal" is tested exactly on max == min rather than on a computed std.
    zero_std = jnp.max(r, axis=1, keepdims=True) == jnp.min(r, axis=1, keepdims=True)
    ref = r[:, :1]
    shifted = r - ref  # exactly 0 in a group of equal rewards
    shift_mean = jnp.where(zero_std, 0.0, shifted.mean(axis=1, keepdims=True))
    centred = jnp.where(zero_std, 0.0, shifted - shift_mean)
    if group_size > 1:
        std = jnp.sqrt(jnp.sum(centred**2, axis=1, keepdims=True) / (group_size - 1))
    else:
        std = jnp.zeros_like(ref)
    adv = centred / (std + eps) if scale_by_std else centred
    metrics = {
        "reward_mean": (ref + shift_mean).mean(),
        "reward_std": std.mean(),
        "zero_std_fraction": zero_std.astype(jnp.float32).mean(),
        "advantage_abs_mean": jnp.abs(adv).mean(),
    }
    return adv.reshape(n), metrics
