"""Builders for RolloutBatch in reward tests."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sif_jax.data.format import area_json
from sif_jax.rl.types import RolloutBatch


def trace(areas: list[tuple[list[list[float]], list[float]]], answer: str = "B") -> str:
    """A valid SIFThinker completion from [(boxes, depths), ...]."""
    body = "".join(f"<area>{area_json(b, d)}</area><text>step {i}.</text>" for i, (b, d) in enumerate(areas))
    return f"<think>{body}</think><answer>{answer}</answer>"


def make_batch(
    texts: list[str],
    *,
    answers: list[str] | None = None,
    choices: list | None = None,
    boxes: list | None = None,
    depth_maps: list | None = None,
    prompt_ids: list[str] | None = None,
    group_size: int | None = None,
    t: int = 8,
) -> RolloutBatch:
    n = len(texts)
    mask = np.ones((n, t), bool)
    return RolloutBatch(
        group_size=group_size or n,
        prompt_ids=prompt_ids or ["p0"] * n,
        texts=texts,
        answers=answers or ["B"] * n,
        choices=choices or [None] * n,
        target_boxes=boxes or [np.array([[0.1, 0.2, 0.4, 0.6]], np.float32)] * n,
        depth_maps=depth_maps or [None] * n,
        completion_mask=jnp.asarray(mask),
        entropies=jnp.ones((n, t)),
        region_mass=jnp.full((n, t), 0.1),
        visual_mass=jnp.full((n, t), 0.5),
        region_tokens=jnp.full((n,), 10, jnp.int32),
        visual_tokens=jnp.full((n,), 50, jnp.int32),
    )
