"""Evaluation: accuracy and target attention score (TAS, METHODS §2) of greedy answers.

For each batch: greedy generation, a scoring pass for the attention masses of the configured
layers, then the deterministic matcher (accuracy), the format checker, the final-area box IoU and
TAS. Results are broken down by question family, relation and familiar/unfamiliar split.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

from sif_jax.data.format import check_format
from sif_jax.model.config import ModelConfig
from sif_jax.parallel import to_host
from sif_jax.rl.rewards import RewardConfig, accuracy_scores
from sif_jax.rl.rewards_attention import region_attention_reward
from sif_jax.rl.rewards_geometry import hierarchical_iou
from sif_jax.rl.sampler import SamplingConfig, generate
from sif_jax.rl.scoring import score
from sif_jax.rl.types import RolloutBatch

Params = Any
PROMPT_KEYS = ("input_ids", "attention_mask", "positions", "pixel_values", "patch_positions",
               "window_segments", "frame_segments", "image_token_index")


@dataclasses.dataclass
class EvalResult:
    """Per-example rows and their aggregate."""

    rows: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        if not self.rows:
            return {"examples": 0}
        out: dict[str, Any] = {"examples": len(self.rows)}
        for key in ("accuracy", "tas", "format", "final_iou"):
            out[key] = float(np.mean([r[key] for r in self.rows]))
        for group in ("family", "relation", "split"):
            buckets: dict[str, list[float]] = defaultdict(list)
            for r in self.rows:
                if r.get(group) is not None:
                    buckets[str(r[group])].append(r["accuracy"])
            out[f"accuracy_by_{group}"] = {k: float(np.mean(v)) for k, v in sorted(buckets.items())}
        return out


def evaluate_batches(
    params: Params,
    batches: Iterable[dict[str, Any]],
    *,
    config: ModelConfig,
    decode: Callable[[Sequence[int]], str],
    max_new_tokens: int,
    mass_layers: Sequence[int],
    eos_token_id: int,
    pad_token_id: int,
    reward_config: RewardConfig | None = None,
    visual_scale: jax.Array | None = None,
) -> EvalResult:
    """Greedy answers for every batch (collated with repeat=1) and their scores."""
    reward_config = reward_config or RewardConfig()
    layers = tuple(sorted({i % config.text.num_layers for i in mass_layers}))
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    rows: list[dict[str, Any]] = []
    for batch in batches:
        prompt = {k: batch[k] for k in PROMPT_KEYS if k in batch}
        samples = generate(params, prompt, jax.random.key(0), config=config, sampling=sampling,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id, visual_scale=visual_scale)
        scores = score(params, prompt, samples.tokens, samples.completion_mask, batch["region_mask"], config=config,
                       mass_layers=layers)
        tokens, mask = to_host(samples.tokens), to_host(samples.completion_mask)
        texts = [decode(tokens[r][mask[r]].tolist()) for r in range(tokens.shape[0])]
        rollout = RolloutBatch(
            group_size=1, prompt_ids=list(batch["prompt_ids"]), texts=texts, answers=list(batch["answers"]),
            choices=list(batch["choices"]), target_boxes=list(batch["target_boxes"]),
            depth_maps=list(batch["depth_maps"]), completion_mask=mask,
            entropies=to_host(scores.entropies), region_mass=to_host(scores.region_mass),
            visual_mass=to_host(scores.visual_mass), region_tokens=to_host(batch["region_tokens"]),
            visual_tokens=to_host(batch["visual_tokens"]),
        )
        accuracy = accuracy_scores(rollout, reward_config)
        _, tas = region_attention_reward(
            rollout.entropies, rollout.region_mass, rollout.visual_mass, rollout.completion_mask,
            rollout.region_tokens, rollout.visual_tokens, top_fraction=reward_config.top_fraction,
        )
        tas = np.asarray(tas)
        first_prob = to_host(samples.first_token_prob)
        metadata = batch.get("metadata") or [{}] * len(texts)
        for r, text in enumerate(texts):
            parsed = check_format(text)
            final_iou = 0.0
            if parsed.ok and parsed.areas:
                final_iou = float(hierarchical_iou([b for b, _ in parsed.areas[-1]], rollout.target_boxes[r]))
            rows.append({
                "prompt_id": rollout.prompt_ids[r], "answer": rollout.answers[r], "output": text,
                "accuracy": float(accuracy[r]), "tas": float(tas[r]), "format": float(parsed.ok),
                "final_iou": final_iou, "first_token_prob": float(first_prob[r]),
                **{k: metadata[r].get(k) for k in ("family", "relation", "split")},
            })
    return EvalResult(rows)
