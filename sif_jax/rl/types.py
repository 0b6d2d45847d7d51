"""Typed data passed between the GRPO stages: `Scored` (sample_and_score -> reward_and_advantage),
`RolloutBatch` (what a reward reads), `Rollout` (reward_and_advantage -> update)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class RolloutBatch:
    """Everything a reward may look at, for N = prompts * group_size samples.

    Samples of one prompt are contiguous: rows [g * G, (g + 1) * G) share prompt g.

    Host-side (Python / NumPy):
      prompt_ids: [N] stable id of each sample's prompt (for "progress" rewards).
      texts: [N] decoded completions (special tokens removed).
      answers: [N] ground-truth answer strings.
      choices: [N] the multiple-choice options or None for short-answer questions.
      target_boxes: [N] float32 [k, 4] normalised (x1, y1, x2, y2) ground-truth boxes.
      depth_maps: [N] float32 [H, W] normalised depth (0 nearest .. 1 farthest), or None.
    Arrays (jax.Array, or NumPy host copies as the train loop passes them so that every process
    of a multi-host run scores the same values), per completion token:
      completion_mask: bool [N, T] real completion tokens (up to and including the first EOS).
      entropies: float32 [N, T] entropy of the temperature-scaled next-token distribution.
      region_mass, visual_mass: float32 [N, T] attention mass each completion token put on the
        target-region / all visual keys, averaged over the configured layers and heads.
      region_tokens, visual_tokens: int32 [N] how many visual tokens lie in the region / image.
      truncated: bool [N] the completion reached max_new_tokens without EOS (it did not finish);
        None = unknown (every completion treated as finished).
    """

    group_size: int
    prompt_ids: list[str]
    texts: list[str]
    answers: list[str]
    choices: list[list[str] | None]
    target_boxes: list[np.ndarray]
    depth_maps: list[np.ndarray | None]
    completion_mask: jax.Array
    entropies: jax.Array
    region_mass: jax.Array
    visual_mass: jax.Array
    region_tokens: jax.Array
    visual_tokens: jax.Array
    truncated: jax.Array | None = None

    def __post_init__(self) -> None:
        n = len(self.texts)
        for name in ("prompt_ids", "answers", "choices", "target_boxes", "depth_maps"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"RolloutBatch.{name} has {len(getattr(self, name))} items; texts has {n}")
        for name in ("completion_mask", "entropies", "region_mass", "visual_mass"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"RolloutBatch.{name} has shape {getattr(self, name).shape}; expected [{n}, T]")
        if self.truncated is not None and tuple(self.truncated.shape) != (n,):
            raise ValueError(f"RolloutBatch.truncated has shape {tuple(self.truncated.shape)}; expected [{n}]")
        if self.group_size < 1 or n % self.group_size:
            raise ValueError(f"RolloutBatch.group_size={self.group_size} does not divide N={n}")

    @property
    def size(self) -> int:
        return len(self.texts)


@dataclasses.dataclass(frozen=True)
class Scored:
    """One micro-batch after `grpo.sample_and_score`: N = prompts * G samples and their scores.

    prompt: the model inputs [N, L] the samples continue. Device arrays:
      completion int32 [N, T]; completion_mask bool [N, T] (up to and including the first EOS);
      truncated bool [N] (reached max_new_tokens without EOS);
      old_logp float32 [N, T]: the sampling policy's log-probs of the temperature-scaled distribution;
      ref_logp float32 [N, T]: the reference's, or None (beta = 0: no KL term);
      entropies, region_mass, visual_mass float32 [N, T] (`infer.scoring.Scores`).
    sample_seconds: wall time of the sampler, until its tokens were ready.
    """

    prompt: Any
    completion: jax.Array
    completion_mask: jax.Array
    truncated: jax.Array
    old_logp: jax.Array
    ref_logp: jax.Array | None
    entropies: jax.Array
    region_mass: jax.Array
    visual_mass: jax.Array
    sample_seconds: float = 0.0


@flax.struct.dataclass
class Rollout:
    """One micro-batch as the policy update consumes it, built once with its advantages
    (`grpo.reward_and_advantage`; immutable, a pytree that `grpo.loss_grads` takes whole).

    prompt: model inputs [N, L]; completion int32 [N, T]; completion_mask bool [N, T] (the
    sequence the policy produced, attended to); old_logp, ref_logp float32 [N, T] (ref_logp None
    when beta = 0); advantages float32 [N]; truncated bool [N] (reached max_new_tokens without
    EOS); loss_mask bool [N, T] the tokens the loss trains: completion_mask, less the truncated
    rows when `GRPOConfig.mask_truncated_completions`.
    """

    prompt: Any
    completion: jax.Array
    completion_mask: jax.Array
    old_logp: jax.Array
    ref_logp: jax.Array | None
    advantages: jax.Array
    truncated: jax.Array
    loss_mask: jax.Array

    @classmethod
    def create(cls, prompt: Any, completion: jax.Array, completion_mask: jax.Array, old_logp: jax.Array,
               ref_logp: jax.Array | None, advantages: jax.Array, truncated: jax.Array | None = None,
               loss_mask: jax.Array | None = None) -> Rollout:
        """truncated None: no row truncated; loss_mask None: `completion_mask`."""
        if truncated is None:
            truncated = jnp.zeros((completion.shape[0],), bool)
        return cls(prompt, completion, completion_mask, old_logp, ref_logp, advantages, truncated,
                   completion_mask if loss_mask is None else loss_mask)
