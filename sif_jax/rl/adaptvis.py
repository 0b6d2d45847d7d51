"""AdaptVis decoding (METHODS §3): confidence-dependent scaling of attention to image tokens.

Decode greedily with alpha = 1; the first generated token's max probability p is the model's
confidence. Rows with p < beta are decoded again with alpha_1 (< 1: smoothed attention on visual
keys), rows with p >= beta with alpha_2 (> 1: sharpened). Alpha multiplies the visual-key logits
of the prompt's last row in the prefill pass (the paper's choice; see `sampler.generate`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from sif_jax.model.config import ModelConfig
from sif_jax.rl.sampler import Samples, SamplingConfig, generate

Params = Any


@dataclasses.dataclass(frozen=True)
class AdaptVisConfig:
    """Defaults from the paper: alpha_1 = 0.5 (smooth), alpha_2 = 1.5 (sharpen), beta = 0.4."""

    alpha_low: float = 0.5
    alpha_high: float = 1.5
    threshold: float = 0.4

    def __post_init__(self) -> None:
        if self.alpha_low <= 0 or self.alpha_high <= 0:
            raise ValueError(f"AdaptVisConfig: alphas must be > 0, got {self.alpha_low}, {self.alpha_high}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"AdaptVisConfig.threshold={self.threshold}: must lie in (0, 1)")


def choose_alpha(first_token_prob: jax.Array, adaptvis: AdaptVisConfig) -> jax.Array:
    """float32 [N]: alpha_1 where the confidence is below the threshold, else alpha_2."""
    return jnp.where(first_token_prob < adaptvis.threshold, adaptvis.alpha_low, adaptvis.alpha_high).astype(
        jnp.float32)


def generate_adaptvis(
    params: Params,
    inputs: dict[str, jax.Array],
    rng: jax.Array,
    *,
    config: ModelConfig,
    sampling: SamplingConfig,
    adaptvis: AdaptVisConfig,
    eos_token_id: int,
    pad_token_id: int,
) -> tuple[Samples, jax.Array]:
    """Two passes: a confidence probe with alpha = 1, then the final decode with the chosen alpha.

    Returns (samples of the second pass, alpha float32 [N] used per row).
    """
    probe = generate(params, inputs, rng, config=config, sampling=dataclasses.replace(sampling, max_new_tokens=1),
                     eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    alpha = choose_alpha(probe.first_token_prob, adaptvis)
    samples = generate(params, inputs, rng, config=config, sampling=sampling, eos_token_id=eos_token_id,
                       pad_token_id=pad_token_id, visual_scale=alpha)
    return samples, alpha
