"""One GRPO iteration as three named stages (METHODS §4), composed by `grpo_step`:

    sample_and_score      (device) prompts repeated G times -> sample (policy) -> score (policy:
                          old log-probs, entropies, masses; reference: log-probs)   -> `Scored`
    reward_and_advantage  (host) decode texts -> rewards -> group advantages        -> `Rollout`
    update                (device) mu passes of clipped-surrogate + KL updates over the
                          micro-batches (`policy_loss`), gradients accumulated exactly

The `Rollout` each update reads is built once, with its advantages, and never changed. Array work
is jit-compiled (sampler, scoring, loss/grad, optimizer update); only text decoding and reward
parsing run on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sif_jax import lora as lora_lib
from sif_jax import parallel
from sif_jax.batch import Batch
from sif_jax.infer.groups import check_groups
from sif_jax.infer.sampler import SamplingConfig, generate
from sif_jax.infer.scoring import score
from sif_jax.lora import LoraConfig
from sif_jax.model.config import ModelConfig
from sif_jax.parallel import to_host
from sif_jax.rl.advantage import group_advantages
from sif_jax.rl.loss import grpo_loss_terms, loss_denominator, mask_truncated
from sif_jax.rl.rewards import RewardConfig, RewardResult, RewardState, combined_reward
from sif_jax.rl.types import Rollout, RolloutBatch, Scored

Params = Any


@flax.struct.dataclass
class TrainState:
    """step int32 []; params (the trainable ones: the model's, or under LoRA the adapters) and
    the frozen reference params (None under LoRA: the reference is `base`); optimizer state (of
    `params` only); rng key data; `base`: the frozen model params under LoRA, else None."""

    step: jax.Array
    params: Params
    ref_params: Params
    opt_state: Any
    rng: jax.Array
    base: Params = None


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """GRPO hyper-parameters (configs/grpo.py documents each field).

    mask_truncated_completions: completions that reach `sampling.max_new_tokens` without EOS get
      a zero loss mask (`loss.mask_truncated`): they are rewarded (and shape the group's
      advantages) but contribute no loss or gradient. Off by default, as in TRL.
    share_prompts: the G rows of a prompt share its work: the vision tower and the prefill run
      once per prompt in the sampler, and the prompt's activations once per prompt in the policy,
      reference and loss+grad passes (`sampler.generate` / `scoring.score` with group_size=G). The
      batch must be text-only or in `data.batching.collate`'s per-row image layout. Families of
      `groups.shares_prompts` (Qwen2.5-VL, LLaVA-1.5, Qwen3-VL); others run every row. The results equal
      the unshared passes' up to float rounding.
    """

    group_size: int = 8
    mu: int = 1
    beta: float = 0.04
    eps_low: float = 0.2
    eps_high: float = 0.2
    reduction: str = "sequence_mean"
    sampling: SamplingConfig = SamplingConfig()
    mass_layers: tuple[int, ...] = (-1,)
    vocab_chunk: int = 4096
    mask_truncated_completions: bool = False
    share_prompts: bool = True

    @property
    def prompt_group(self) -> int:
        """Rows per prompt the sampler and scoring passes share prompt work over (1 = none)."""
        return self.group_size if self.share_prompts else 1
    lora: LoraConfig | None = None  # set: TrainState.params are adapters over TrainState.base

    def layers(self, config: ModelConfig) -> tuple[int, ...]:
        """Mass layers with negative indices resolved (-1 = the last decoder layer)."""
        n = config.text.num_layers
        return tuple(sorted({i % n for i in self.mass_layers}))


def score_temperature(grpo: GRPOConfig) -> float:
    """Log-probs are of the temperature-scaled distribution the samples came from (greedy: T=1)."""
    return grpo.sampling.temperature if grpo.sampling.temperature > 0 else 1.0


@functools.partial(jax.jit, static_argnames=("scale",))
def _merged(base, adapters, scale: float):
    return lora_lib.merge(base, adapters, scale)


def policy_params(state: TrainState, grpo: GRPOConfig) -> Params:
    """The params the policy samples and scores with: `state.params`, or under LoRA the base
    with the adapters merged in (a transient the size of the base, built once per call)."""
    if grpo.lora is None:
        return state.params
    return _merged(state.base, state.params, grpo.lora.scale)


def reference_params(state: TrainState, grpo: GRPOConfig) -> Params:
    """The frozen KL reference: `state.ref_params`, or under LoRA the base itself (adapters off)."""
    return state.ref_params if grpo.lora is None else state.base


def policy_loss(params: Params, rollout: Rollout, denominator: jax.Array, base: Params = None,
                dropout_rng: jax.Array | None = None, *, config: Any, grpo: GRPOConfig
                ) -> tuple[jax.Array, tuple[jax.Array, jax.Array, dict[str, jax.Array]]]:
    """The loss the update differentiates: one micro-batch's clipped surrogate + KL numerator
    (`loss.grpo_loss_terms`) over the total `denominator` of all micro-batches (float32 [], so
    accumulating the micro-batches' gradients gives the full batch's exactly).

    The policy's log-probs are re-scored (`infer.scoring.score`) over `rollout.completion`,
    attending to `rollout.completion_mask` and training `rollout.loss_mask`. Under `grpo.lora`,
    `params` are the adapters, merged onto the frozen `base` (the gradient is the adapters');
    `dropout_rng` (key data) draws the adapter dropout mask.

    Returns (loss float32 [], (numerator, denominator of this micro-batch, loss metrics)).
    """
    if grpo.lora is not None:
        rng = None if dropout_rng is None else jax.random.wrap_key_data(dropout_rng)
        params = lora_lib.merge(base, params, grpo.lora.scale, dropout=grpo.lora.dropout, dropout_rng=rng)
    scores = score(params, rollout.prompt, rollout.completion, rollout.completion_mask, config=config,
                   temperature=score_temperature(grpo), vocab_chunk=grpo.vocab_chunk, group_size=grpo.prompt_group)
    num, den, metrics = grpo_loss_terms(
        scores.logprobs, rollout.old_logp, rollout.ref_logp, rollout.advantages, rollout.loss_mask,
        eps_low=grpo.eps_low, eps_high=grpo.eps_high, beta=grpo.beta, reduction=grpo.reduction,
    )
    return num / denominator, (num, den, metrics)


@functools.partial(jax.jit, static_argnames=("config", "grpo", "grad_shardings"))
def loss_grads(params: Params, rollout: Rollout, denominator: jax.Array, base: Params = None,
               dropout_rng: jax.Array | None = None, *, config: Any, grpo: GRPOConfig,
               grad_shardings: tuple | None = None) -> tuple[Params, tuple]:
    """Gradient of `policy_loss` in `params` and its aux (numerator, denominator, metrics).
    grad_shardings: `parallel.sharding_leaves(params)`, so the gradient (and the accumulated sum)
    is laid out like the params."""
    (_, aux), grads = jax.value_and_grad(policy_loss, has_aux=True)(
        params, rollout, denominator, base, dropout_rng, config=config, grpo=grpo)
    return parallel.constrain_leaves(grads, grad_shardings), aux


def sample_and_score(params: Params, ref_params: Params, batch: Batch, rng: jax.Array, *, config: Any,
                     grpo: GRPOConfig, eos_token_id: int, pad_token_id: int) -> Scored:
    """Stage 1 (device): G completions per prompt from the policy, scored by the policy (old
    log-probs, entropies, attention masses over `batch.region_mask`) and by the reference.

    `batch` is collated with each prompt repeated G times (`data.batching.collate(repeat=G)`);
    with `grpo.share_prompts` its rows must form groups of equal prompts (ValueError otherwise).
    """
    prompt = batch.inputs
    check_groups(prompt.input_ids, grpo.prompt_group)
    shared = dict(config=config, temperature=score_temperature(grpo), vocab_chunk=grpo.vocab_chunk,
                  group_size=grpo.prompt_group)
    t0 = time.perf_counter()
    samples = generate(params, prompt, rng, config=config, sampling=grpo.sampling, eos_token_id=eos_token_id,
                       pad_token_id=pad_token_id, group_size=grpo.prompt_group)
    jax.block_until_ready(samples.tokens)
    seconds = time.perf_counter() - t0
    policy = score(params, prompt, samples.tokens, samples.completion_mask, batch.region_mask,
                   mass_layers=grpo.layers(config), **shared)
    ref_logp = None
    if grpo.beta != 0:
        ref_logp = score(ref_params, prompt, samples.tokens, samples.completion_mask, **shared).logprobs
    return Scored(prompt, samples.tokens, samples.completion_mask, samples.truncated, policy.logprobs, ref_logp,
                  policy.entropies, policy.region_mass, policy.visual_mass, sample_seconds=seconds)


def reward_and_advantage(
    scored: Sequence[Scored],
    batches: Sequence[Batch],
    *,
    grpo: GRPOConfig,
    decode: Callable[[Sequence[int]], str],
    reward_config: RewardConfig,
    reward_state: RewardState,
    reward_fn: Callable[[RolloutBatch, RewardState, RewardConfig], RewardResult] = combined_reward,
) -> tuple[list[Rollout], RewardState, dict[str, float], list[str]]:
    """Stage 2 (host): decode, reward and normalise within groups; builds each micro-batch's
    `Rollout` once, with its advantages and loss mask.

    Rewards read host copies (gathered across processes), so every process computes the same.
    Returns (rollouts, the updated reward state, metrics: the rewards' and advantages' means over
    micro-batches, completion_length, entropy (per token), reward (mean), truncated_fraction (the
    share of samples that reached `grpo.sampling.max_new_tokens` without EOS), the decoded
    completions of all micro-batches in order)."""
    rollouts: list[Rollout] = []
    metrics: dict[str, list[float]] = {}
    rewards, truncated, texts = [], [], []
    for s, batch in zip(scored, batches, strict=True):
        tokens, mask = to_host(s.completion), to_host(s.completion_mask)
        targets = batch.targets
        rb = RolloutBatch(
            group_size=grpo.group_size, prompt_ids=list(targets.prompt_ids),
            texts=[decode(tokens[r][mask[r]].tolist()) for r in range(tokens.shape[0])],
            answers=list(targets.answers), choices=list(targets.choices),
            target_boxes=list(targets.target_boxes), depth_maps=list(targets.depth_maps),
            completion_mask=mask, entropies=to_host(s.entropies), region_mass=to_host(s.region_mass),
            visual_mass=to_host(s.visual_mass), region_tokens=to_host(batch.region_tokens),
            visual_tokens=to_host(batch.visual_tokens), truncated=to_host(s.truncated),
        )
        result = reward_fn(rb, reward_state, reward_config)
        reward_state = result.state
        advantages, adv_metrics = group_advantages(jnp.asarray(result.rewards), grpo.group_size)
        loss_mask = mask_truncated(s.completion_mask, s.truncated) if grpo.mask_truncated_completions else None
        rollouts.append(Rollout.create(s.prompt, s.completion, s.completion_mask, s.old_logp, s.ref_logp, advantages,
                                       truncated=s.truncated, loss_mask=loss_mask))
        for k, v in {**result.metrics, **adv_metrics}.items():
            metrics.setdefault(k, []).append(float(v))
        metrics.setdefault("completion_length", []).append(float(mask.sum(1).mean()))
        metrics.setdefault("entropy", []).append(float(np.asarray(rb.entropies).sum() / max(mask.sum(), 1)))
        rewards.append(np.asarray(result.rewards))
        truncated.append(np.asarray(rb.truncated, bool))
        texts.extend(rb.texts)
    out = {k: float(np.mean(v)) for k, v in metrics.items()}
    out["reward"] = float(np.mean(np.concatenate(rewards)))
    out["truncated_fraction"] = float(np.mean(np.concatenate(truncated)))
    return rollouts, reward_state, out, texts


def update(
    state: TrainState,
    rollouts: Sequence[Rollout],
    *,
    config: Any,
    grpo: GRPOConfig,
    apply_updates: Callable[[TrainState, Params], TrainState],
) -> tuple[TrainState, dict[str, float]]:
    """Stage 3 (device): `grpo.mu` passes over the micro-batches; each pass is one optimizer step
    (`apply_updates(state, grads)`) whose gradient is the exact full-batch gradient of
    `policy_loss` (numerators over the total denominator). Metrics: loss, grad_norm, and
    kl_mean, ratio_mean, clip_low_fraction, clip_high_fraction weighted by the micro-batches' tokens."""
    denominator = jnp.maximum(sum(loss_denominator(r.loss_mask, grpo.reduction) for r in rollouts), 1.0)
    metrics: dict[str, float] = {}
    grad_shardings = parallel.sharding_leaves(state.params)
    for k in range(grpo.mu):
        grads_sum, num_sum, parts = None, 0.0, []
        for j, r in enumerate(rollouts):
            dropout_rng = None
            if grpo.lora is not None and grpo.lora.dropout > 0:
                dropout_rng = jax.random.key_data(jax.random.fold_in(
                    jax.random.fold_in(jax.random.wrap_key_data(state.rng), 1 + k), j))
            grads, (num, _, m) = loss_grads(state.params, r, denominator, state.base, dropout_rng, config=config,
                                            grpo=grpo, grad_shardings=grad_shardings)
            grads_sum = grads if grads_sum is None else jax.tree.map(jnp.add, grads_sum, grads)
            num_sum = num_sum + num
            parts.append(m)
        state = apply_updates(state, grads_sum)
        weights = np.array([float(m["num_tokens"]) for m in parts])
        weights = weights / max(weights.sum(), 1.0)
        metrics = {"loss": float(num_sum / denominator), "grad_norm": float(optax.tree.norm(grads_sum))}
        for key in ("kl_mean", "ratio_mean", "clip_low_fraction", "clip_high_fraction"):
            metrics[key] = float(sum(w * float(m[key]) for w, m in zip(weights, parts, strict=True)))
    return state, metrics


def grpo_step(
    state: TrainState,
    micro_batches: Sequence[Batch],
    *,
    config: Any,
    grpo: GRPOConfig,
    apply_updates: Callable[[TrainState, Params], TrainState],
    decode: Callable[[Sequence[int]], str],
    reward_config: RewardConfig,
    reward_state: RewardState,
    eos_token_id: int,
    pad_token_id: int,
    reward_fn: Callable[[RolloutBatch, RewardState, RewardConfig], RewardResult] = combined_reward,
) -> tuple[TrainState, RewardState, dict[str, float], str]:
    """One GRPO iteration (METHODS §4): sample_and_score -> reward_and_advantage -> update.

    Args:
      state: the train state; `state.rng` seeds the sampler (micro-batch i: fold_in(rng, i)).
      micro_batches: collated batches, each prompt repeated G = `grpo.group_size` times.
      config: the model's config (any family). apply_updates: one optimizer step.
      decode: token ids -> text (special tokens removed), for the rewards.

    Returns (new state, new reward state, metrics (floats: the stages' metrics plus
    sampler_tokens_per_s and sample_seconds), one decoded completion as an example).
    """
    params, ref_params = policy_params(state, grpo), reference_params(state, grpo)
    rng = jax.random.wrap_key_data(state.rng)
    scored = [
        sample_and_score(params, ref_params, batch, jax.random.fold_in(rng, i), config=config, grpo=grpo,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        for i, batch in enumerate(micro_batches)
    ]
    del params  # under LoRA a merged copy of the base: free it before the update
    rollouts, reward_state, reward_metrics, texts = reward_and_advantage(
        scored, micro_batches, grpo=grpo, decode=decode, reward_config=reward_config,
        reward_state=reward_state, reward_fn=reward_fn)
    state, update_metrics = update(state, rollouts, config=config, grpo=grpo, apply_updates=apply_updates)
    sample_seconds = sum(s.sample_seconds for s in scored)
    generated = sum(int(np.asarray(to_host(s.completion_mask)).sum()) for s in scored)
    metrics = {**reward_metrics, "sampler_tokens_per_s": generated / max(sample_seconds, 1e-9),
               "sample_seconds": sample_seconds, **update_metrics}
    return state, reward_state, metrics, texts[0] if texts else ""
