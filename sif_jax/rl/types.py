"""Typed data passed between the GRPO pieces (sampler -> scoring -> rewards -> advantages -> loss)."""

from __future__ import annotations

import dataclasses

import jax
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
