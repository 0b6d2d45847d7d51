"""The optimizer every training phase (SFT, GRPO) builds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# The top-level params subtrees that hold a family's vision tower (Qwen-VL: "visual"; LLaVA: "vision_tower").
VISION_SUBTREES = ("visual", "vision_tower")


def make_optimizer(learning_rate: float | optax.Schedule, *, weight_decay: float = 0.0,
                   grad_clip: float = 1.0, freeze_vision: bool = False) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; with `freeze_vision` the vision tower's (`VISION_SUBTREES`)
    gradients are zeroed before the clipping, so they neither move it nor shrink the other params'
    step, and its final updates are zeroed too (weight decay included), so it never changes.

    Freezing is a stateless step rather than optax.multi_transform: the optimizer state
    keeps the params' tree structure, which the sharding rules map one to one.
    """
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), optax.adamw(learning_rate, weight_decay=weight_decay))
    if not freeze_vision:
        return tx

    def zero_vision(updates, params=None):
        del params
        return {name: jax.tree.map(jnp.zeros_like, sub) if name in VISION_SUBTREES else sub
                for name, sub in updates.items()}

    return optax.chain(optax.stateless(zero_vision), tx, optax.stateless(zero_vision))
