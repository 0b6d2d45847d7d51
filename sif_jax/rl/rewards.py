"""GRPO rewards over a typed `RolloutBatch` (METHODS §1 SIFThinker, §2 SAYO).

Every reward is `fn(batch, state, config) -> RewardResult(rewards float32 [N], metrics, state)`.
Text parsing runs on the host and never raises on model output: a malformed completion scores 0
on every reward that needs what it failed to provide. The region-attention reward is a jitted
array function (`rewards_attention.region_attention_reward`).

Rewards (names are the keys of `RewardConfig.weights`):
  format            SIFThinker grammar ∈ {0, 1} (`data.format.check_format`).
  accuracy          s ∈ [0, 1] from the matcher/judge, with progress s + (s - s_prev) when the
                    prompt's previous group mean s_prev <= s; ∈ [0, 2].
  iou               hierarchical IoU with progress ∈ [0, 2]; needs a valid trace.
  depth             depth consistency ∈ [0, 1]; needs a valid trace and a depth map.
  region_attention  SAYO tanh(log x) ∈ (-1, 1).
  sayo_format       SAYO answer-tag · length factor ∈ [0, 1].
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from sif_jax.data.format import FormatResult, check_format
from sif_jax.rl.rewards_attention import region_attention_reward, sayo_format_score
from sif_jax.rl.rewards_geometry import depth_consistency, iou_progress
from sif_jax.rl.rewards_match import Judge, match_answer
from sif_jax.rl.types import RolloutBatch

DEFAULT_WEIGHTS: dict[str, float] = {
    "format": 1.0,
    "accuracy": 1.0,
    "iou": 1.0,
    "depth": 1.0,
    "region_attention": 1.0,
    "sayo_format": 0.0,
}
REWARD_NAMES: tuple[str, ...] = tuple(DEFAULT_WEIGHTS)  # the keys of `RewardConfig.weights` and `REWARDS`
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class RewardState:
    """Per-prompt group-mean accuracy s_prev from the last time each prompt was scored.

    Immutable: `updated` returns a new state. `to_json`/`from_json` let the train loop store it
    with the checkpoint so the progress terms survive a restart.
    """

    prev_accuracy: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def updated(self, group_means: Mapping[str, float]) -> RewardState:
        return RewardState({**self.prev_accuracy, **{k: float(v) for k, v in group_means.items()}})

    def to_json(self) -> str:
        return json.dumps({"prev_accuracy": dict(self.prev_accuracy)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RewardState:
        data = json.loads(text)
        return cls({str(k): float(v) for k, v in data.get("prev_accuracy", {}).items()})


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Reward weights and knobs (defaults from METHODS §1/§2).

    weights: reward name -> weight (unknown names are an error; missing names weigh 0).
    judge: optional (prediction, answer, choices) -> float in [0, 1]; replaces the matcher.
      Exceptions raised by a judge propagate (they are a bug or an outage, not model output).
    accuracy_requires_format: False → the answer is the only <answer>…</answer> block even when
      the rest of the grammar fails (R1-style; format has its own reward; several blocks → no
      answer, see `extract_answer`); True → only valid traces.
    """

    weights: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    judge: Judge | None = None
    accuracy_requires_format: bool = False
    numeric_rtol: float = 1e-3
    numeric_atol: float = 1e-6
    whole_image_tol: float = 1e-3
    depth_rel_tol: float = 0.1
    depth_floor: float = 0.01
    top_fraction: float = 0.3
    attention_eps: float = 1e-8
    sayo_short: int = 60
    sayo_long: int = 100
    sayo_scale: float = 0.6


class RewardResult(NamedTuple):
    """rewards: float32 [N]; metrics: float scalars; state: the (possibly updated) state;
    parts: per-reward float32 [N] arrays (the combined reward fills it)."""

    rewards: np.ndarray
    metrics: dict[str, float]
    state: RewardState
    parts: dict[str, np.ndarray] = {}


def _parse_all(batch: RolloutBatch) -> list[FormatResult]:
    return [check_format(t) for t in batch.texts]


def format_reward(batch: RolloutBatch, state: RewardState, config: RewardConfig) -> RewardResult:
    """SIFThinker format ∈ {0, 1}: the grammar holds exactly."""
    r = np.array([float(f.ok) for f in _parse_all(batch)], np.float32)
    return RewardResult(r, {"format_mean": float(r.mean())}, state)


def extract_answer(text: object, parsed: FormatResult | None = None, requires_format: bool = False) -> str | None:
    """The stripped answer of a completion, or None (no answer: accuracy 0).

    A valid trace gives its one answer. Otherwise (unless `requires_format`, which gives None)
    the answer is the content of the completion's only `<answer>…</answer>` block; a completion
    with several `<answer>` tags has no answer, so hedging ("<answer>A</answer><answer>B</answer>")
    scores 0 rather than having whichever block comes first or last graded. Evaluation reports
    the same answer it scores (`sif_jax.evaluate` calls this and `accuracy_scores`).
    """
    parsed = parsed if parsed is not None else check_format(text)
    if parsed.ok:
        return parsed.answer
    if requires_format or not isinstance(text, str):
        return None
    if text.count("<answer>") != 1:
        return None
    found = _ANSWER.findall(text)
    answer = found[0].strip() if len(found) == 1 else ""
    return answer or None


def accuracy_scores(batch: RolloutBatch, config: RewardConfig) -> np.ndarray:
    """s ∈ [0, 1] per sample, float32 [N]; no extractable answer → 0."""
    out = np.zeros(batch.size, np.float32)
    for i, text in enumerate(batch.texts):
        pred = extract_answer(text, requires_format=config.accuracy_requires_format)
        if pred is None:
            continue
        choices = batch.choices[i]
        if config.judge is not None:
            s = float(config.judge(pred, batch.answers[i], choices))
        else:
            s = match_answer(pred, batch.answers[i], choices, rtol=config.numeric_rtol, atol=config.numeric_atol)
        out[i] = np.clip(s, 0.0, 1.0) if np.isfinite(s) else 0.0
    return out


def group_mean(values: np.ndarray) -> float:
    """Mean of one group's values, float [G] -> float, exact for a group of equal values.

    Taken as v_0 + mean(v - v_0) in float64: equal values give v_0 itself (a float32 mean of eight
    0.35s is 0.34999996, which would make the next identical group look like progress or regress).
    """
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("group_mean of an empty group")
    if v.max() == v.min():
        return float(v[0])
    return float(v[0] + (v - v[0]).mean())


def accuracy_reward(batch: RolloutBatch, state: RewardState, config: RewardConfig) -> RewardResult:
    """Accuracy with progress: s + (s - s_prev) if the prompt was seen with group mean
    s_prev <= s, else s. The new state maps each prompt id to this batch's mean s over its
    samples (the group mean)."""
    s = accuracy_scores(batch, config)
    r = s.copy()
    for i, pid in enumerate(batch.prompt_ids):
        prev = state.prev_accuracy.get(pid)
        if prev is not None and s[i] >= prev:
            r[i] = s[i] + (s[i] - prev)
    ids = np.asarray(batch.prompt_ids, dtype=object)
    means = {pid: group_mean(s[ids == pid]) for pid in dict.fromkeys(batch.prompt_ids)}
    metrics = {"accuracy_mean": float(r.mean()), "accuracy_s_mean": float(s.mean())}
    return RewardResult(r.astype(np.float32), metrics, state.updated(means), {"accuracy_s": s})


def iou_reward(batch: RolloutBatch, state: RewardState, config: RewardConfig) -> RewardResult:
    """Hierarchical IoU with progress ∈ [0, 2]; invalid trace or no GT boxes → 0."""
    r = np.zeros(batch.size, np.float32)
    final = np.zeros(batch.size, np.float32)
    for i, f in enumerate(_parse_all(batch)):
        if f.ok:
            r[i], final[i] = iou_progress(f.areas, batch.target_boxes[i], config.whole_image_tol)
    return RewardResult(r, {"iou_mean": float(r.mean()), "iou_final_mean": float(final.mean())}, state)


def depth_reward(batch: RolloutBatch, state: RewardState, config: RewardConfig) -> RewardResult:
    """Depth consistency ∈ [0, 1] over all areas' pairs; invalid trace or no depth map → 0."""
    r = np.zeros(batch.size, np.float32)
    for i, f in enumerate(_parse_all(batch)):
        if f.ok:
            r[i] = depth_consistency(f.areas, batch.depth_maps[i], config.depth_rel_tol, config.depth_floor)
    return RewardResult(r, {"depth_mean": float(r.mean())}, state)


def region_attention_batch_reward(batch: RolloutBatch, state: RewardState, config: RewardConfig) -> RewardResult:
    """SAYO region-attention reward (jitted); metrics include the mean TAS."""
    reward, tas = region_attention_reward(
        batch.entropies, batch.region_mass, batch.visual_mass, batch.completion_mask,
        batch.region_tokens, batch.visual_tokens, top_fraction=config.top_fraction, eps=config.attention_eps,
    )
    r, t = np.asarray(reward, np.float32), np.asarray(tas, np.float32)
    return RewardResult(r, {"region_attention_mean": float(r.mean()), "tas_mean": float(t.mean())}, state, {"tas": t})


def sayo_format_reward(batch: RolloutBatch, state: RewardState, config: RewardConfig) -> RewardResult:
    """SAYO answer-tag · length reward with L = completion token count (mask sum)."""
    lengths = np.asarray(batch.completion_mask).astype(bool).sum(axis=1)
    r = np.array(
        [
            sayo_format_score(t, n, short=config.sayo_short, long=config.sayo_long, scale=config.sayo_scale)
            for t, n in zip(batch.texts, lengths, strict=True)
        ],
        np.float32,
    )
    return RewardResult(r, {"sayo_format_mean": float(r.mean())}, state)


RewardFn = Callable[[RolloutBatch, RewardState, RewardConfig], RewardResult]
REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "iou": iou_reward,
    "depth": depth_reward,
    "region_attention": region_attention_batch_reward,
    "sayo_format": sayo_format_reward,
}
assert tuple(REWARDS) == REWARD_NAMES, "REWARDS and DEFAULT_WEIGHTS name the same rewards in the same order"


def combined_reward(batch: RolloutBatch, state: RewardState, config: RewardConfig) -> RewardResult:
    """Weighted sum of all rewards: total float32 [N], the new state (accuracy progress), metrics
    (`<name>_mean` of every part, whatever its weight, `total_mean`, `tas_mean`,
    `accuracy_s_mean`) and `parts` (every reward's [N] array plus "tas" and "accuracy_s")."""
    unknown = set(config.weights) - set(REWARDS)
    if unknown:
        raise ValueError(f"unknown reward names {sorted(unknown)}; known: {sorted(REWARDS)}")
    total = np.zeros(batch.size, np.float32)
    metrics: dict[str, Any] = {}
    parts: dict[str, np.ndarray] = {}
    new_state = state
    for name, fn in REWARDS.items():
        res = fn(batch, state, config)  # every reward sees the state from before this batch
        if name == "accuracy":
            new_state = res.state
        total += np.float32(config.weights.get(name, 0.0)) * res.rewards
        metrics.update(res.metrics)
        parts[name] = res.rewards
        parts.update(res.parts)
    metrics["total_mean"] = float(total.mean())
    return RewardResult(total, metrics, new_state, parts)
