"""One GRPO iteration as a composition of the pure pieces (METHODS §4).

    prompts -repeat G-> sample (policy) -> score (policy: old log-probs, entropies, masses;
    reference: log-probs) -> decode texts -> rewards -> group advantages -> mu passes of
    clipped-surrogate + KL updates over micro-batches, gradients accumulated exactly.

Array work is jit-compiled (sampler, scoring, advantages, loss/grad, optimizer update); only text
decoding and reward parsing run on the host.
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
from sif_jax.lora import LoraConfig
from sif_jax.model.config import ModelConfig
from sif_jax.model.family import family_of
from sif_jax.parallel import to_host
from sif_jax.rl.advantage import group_advantages
from sif_jax.rl.groups import check_groups
from sif_jax.rl.loss import grpo_loss_terms, loss_denominator, mask_truncated
from sif_jax.rl.rewards import RewardConfig, RewardResult, RewardState, combined_reward
from sif_jax.rl.sampler import SamplingConfig, generate
from sif_jax.rl.scoring import score
from sif_jax.rl.types import RolloutBatch

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
      batch must be text-only or in the batched-image layout (`data.batching.collate`). The
      results equal the unshared passes' up to float rounding.
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


def _score_temperature(grpo: GRPOConfig) -> float:
    """Log-probs are of the temperature-scaled distribution the samples came from (greedy: T=1)."""
    return grpo.sampling.temperature if grpo.sampling.temperature > 0 else 1.0


def prompt_arrays(batch: dict[str, Any], config: Any = None) -> dict[str, jax.Array]:
    """The model-input arrays of a collated batch (host lists and extras dropped), those of
    `config`'s family (None: Qwen2.5-VL's)."""
    if config is None:
        from sif_jax.model.vlm import model_inputs

        return model_inputs(batch)
    return family_of(config).model_inputs(batch)


def make_optimizer(learning_rate: float | optax.Schedule, *, weight_decay: float = 0.0,
                   grad_clip: float = 1.0, freeze_vision: bool = False) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; with `freeze_vision` the vision tower's final updates
    are zeroed (weight decay included), so it never changes.

    Freezing is a stateless last step rather than optax.multi_transform: the optimizer state
    keeps the params' tree structure, which the sharding rules map one to one.
    """
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), optax.adamw(learning_rate, weight_decay=weight_decay))
    if not freeze_vision:
        return tx

    def zero_vision(updates, params=None):
        del params
        return {name: jax.tree.map(jnp.zeros_like, sub) if name == "visual" else sub for name, sub in updates.items()}

    return optax.chain(tx, optax.stateless(zero_vision))


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


@functools.partial(jax.jit, static_argnames=("config", "grpo", "grad_shardings"))
def _loss_grads(params, prompt, completion, completion_mask, loss_mask, old_logp, ref_logp, advantages, denominator,
                base=None, dropout_rng=None, *, config: ModelConfig, grpo: GRPOConfig,
                grad_shardings: tuple | None = None):
    """Gradient of numerator / total denominator for one micro-batch (exact accumulation).
    `completion_mask` is the sequence the policy produced (attention); `loss_mask` the tokens
    that are trained (`Rollout.loss_mask`). Under `grpo.lora`, `params` are the adapters, merged
    onto the frozen `base` inside the loss (the gradient is the adapters'); `dropout_rng` (key
    data) draws the adapter dropout mask. grad_shardings: `parallel.sharding_leaves(params)`, so
    the gradient (and the accumulated sum) is laid out like the params."""
    def loss_fn(p):
        if grpo.lora is not None:
            rng = None if dropout_rng is None else jax.random.wrap_key_data(dropout_rng)
            p = lora_lib.merge(base, p, grpo.lora.scale, dropout=grpo.lora.dropout, dropout_rng=rng)
        scores = score(p, prompt, completion, completion_mask, config=config,
                       temperature=_score_temperature(grpo), vocab_chunk=grpo.vocab_chunk,
                       group_size=grpo.prompt_group)
        num, den, metrics = grpo_loss_terms(
            scores.logprobs, old_logp, ref_logp, advantages, loss_mask,
            eps_low=grpo.eps_low, eps_high=grpo.eps_high, beta=grpo.beta, reduction=grpo.reduction,
        )
        return num / denominator, (num, den, metrics)

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return parallel.constrain_leaves(grads, grad_shardings), aux


@dataclasses.dataclass
class Rollout:
    """One micro-batch of samples with everything the update needs (device arrays).

    completion int32 [N, T]; completion_mask bool [N, T] (up to and including EOS); old_logp,
    ref_logp float32 [N, T]; advantages float32 [N]; truncated bool [N] (reached max_new_tokens
    without EOS); loss_mask bool [N, T] the tokens the loss trains: completion_mask, less the
    truncated rows when `GRPOConfig.mask_truncated_completions`.
    """

    prompt: dict[str, jax.Array]
    completion: jax.Array
    completion_mask: jax.Array
    old_logp: jax.Array
    ref_logp: jax.Array | None
    advantages: jax.Array | None = None
    truncated: jax.Array | None = None
    loss_mask: jax.Array | None = None

    def __post_init__(self) -> None:
        if self.truncated is None:
            self.truncated = jnp.zeros((self.completion.shape[0],), bool)
        if self.loss_mask is None:
            self.loss_mask = self.completion_mask


def collect_rollouts(
    state: TrainState,
    micro_batches: Sequence[dict[str, Any]],
    *,
    config: ModelConfig,
    grpo: GRPOConfig,
    decode: Callable[[Sequence[int]], str],
    reward_config: RewardConfig,
    reward_state: RewardState,
    reward_fn: Callable[[RolloutBatch, RewardState, RewardConfig], RewardResult] = combined_reward,
    eos_token_id: int,
    pad_token_id: int,
) -> tuple[list[Rollout], RewardState, dict[str, float]]:
    """Samples, scores and rewards every micro-batch (each already repeated G times per prompt).

    Metrics include truncated_fraction: the share of all samples that reached
    `grpo.sampling.max_new_tokens` without EOS (masked out of the loss when
    `grpo.mask_truncated_completions`)."""
    rollouts: list[Rollout] = []
    batches: list[RolloutBatch] = []
    rng = jax.random.wrap_key_data(state.rng)
    sample_time, generated = 0.0, 0
    layers = grpo.layers(config)
    params, ref_params = policy_params(state, grpo), reference_params(state, grpo)
    for i, batch in enumerate(micro_batches):
        prompt = prompt_arrays(batch, config)
        check_groups(batch["input_ids"], grpo.prompt_group)
        t0 = time.perf_counter()
        samples = generate(params, prompt, jax.random.fold_in(rng, i), config=config, sampling=grpo.sampling,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id, group_size=grpo.prompt_group)
        tokens = to_host(samples.tokens)
        sample_time += time.perf_counter() - t0
        mask = to_host(samples.completion_mask)
        truncated = to_host(samples.truncated)
        generated += int(mask.sum())
        policy = score(params, prompt, samples.tokens, samples.completion_mask, batch["region_mask"],
                       config=config, mass_layers=layers, temperature=_score_temperature(grpo),
                       vocab_chunk=grpo.vocab_chunk, group_size=grpo.prompt_group)
        ref_logp = None
        if grpo.beta != 0:
            ref_logp = score(ref_params, prompt, samples.tokens, samples.completion_mask, config=config,
                             temperature=_score_temperature(grpo), vocab_chunk=grpo.vocab_chunk,
                             group_size=grpo.prompt_group).logprobs
        texts = [decode(tokens[r][mask[r]].tolist()) for r in range(tokens.shape[0])]
        # Rewards read host copies (gathered across processes), so every process computes the same.
        batches.append(RolloutBatch(
            group_size=grpo.group_size, prompt_ids=list(batch["prompt_ids"]), texts=texts,
            answers=list(batch["answers"]), choices=list(batch["choices"]),
            target_boxes=list(batch["target_boxes"]), depth_maps=list(batch["depth_maps"]),
            completion_mask=mask, entropies=to_host(policy.entropies),
            region_mass=to_host(policy.region_mass), visual_mass=to_host(policy.visual_mass),
            region_tokens=to_host(batch["region_tokens"]), visual_tokens=to_host(batch["visual_tokens"]),
            truncated=truncated,
        ))
        loss_mask = samples.completion_mask
        if grpo.mask_truncated_completions:
            loss_mask = mask_truncated(samples.completion_mask, samples.truncated)
        rollouts.append(Rollout(prompt, samples.tokens, samples.completion_mask, policy.logprobs, ref_logp,
                                truncated=samples.truncated, loss_mask=loss_mask))

    metrics: dict[str, list[float]] = {}
    all_rewards = []
    for rollout, rb in zip(rollouts, batches, strict=True):
        result = reward_fn(rb, reward_state, reward_config)
        reward_state = result.state
        advantages, adv_metrics = group_advantages(jnp.asarray(result.rewards), grpo.group_size)
        rollout.advantages = advantages
        all_rewards.append(result.rewards)
        for k, v in {**result.metrics, **adv_metrics}.items():
            metrics.setdefault(k, []).append(float(v))
        metrics.setdefault("completion_length", []).append(float(np.asarray(rb.completion_mask).sum(1).mean()))
        entropy = float(np.asarray(rb.entropies).sum() / max(np.asarray(rb.completion_mask).sum(), 1))
        metrics.setdefault("entropy", []).append(entropy)
    out = {k: float(np.mean(v)) for k, v in metrics.items()}
    out["reward"] = float(np.mean(np.concatenate(all_rewards)))
    out["truncated_fraction"] = float(np.mean(np.concatenate([np.asarray(rb.truncated, bool) for rb in batches])))
    out["sampler_tokens_per_s"] = generated / max(sample_time, 1e-9)
    out["sample_seconds"] = sample_time
    out["texts_example"] = batches[0].texts[0] if batches else ""  # type: ignore[assignment]
    return rollouts, reward_state, out


def policy_update(
    state: TrainState,
    rollouts: Sequence[Rollout],
    *,
    config: ModelConfig,
    grpo: GRPOConfig,
    optimizer: optax.GradientTransformation,
    apply_updates: Callable[[TrainState, Params], TrainState],
) -> tuple[TrainState, dict[str, float]]:
    """`grpo.mu` passes over the micro-batches; each pass is one optimizer step whose gradient is
    the exact full-batch gradient (numerators over the total denominator)."""
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
            grads, (num, _, m) = _loss_grads(state.params, r.prompt, r.completion, r.completion_mask, r.loss_mask,
                                             r.old_logp, r.ref_logp, r.advantages, denominator, state.base,
                                             dropout_rng, config=config, grpo=grpo, grad_shardings=grad_shardings)
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
