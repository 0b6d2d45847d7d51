"""Jit-compiled generation: prefill, then a `lax.while_loop` of KV-cached decode steps.

Params are traced arguments, so one compiled program serves every training step; the loop exits
early once every row has produced EOS. Rows of a group are contiguous copies of one prompt
(see `repeat_for_groups`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sif_jax.model.cache import decode_step, prefill
from sif_jax.model.config import ModelConfig

Params = Any
NEG_INF = -1e30


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 = greedy; top_k 0 = off; top_p 1 = off."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens={self.max_new_tokens}: must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature={self.temperature}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p={self.top_p}: must lie in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k={self.top_k}: must be >= 0")


@flax.struct.dataclass
class Samples:
    """tokens int32 [N, T] (pad after EOS); completion_mask bool [N, T] (up to and including
    EOS); logprobs float32 [N, T] of each sampled token under the sampling distribution;
    first_token_prob float32 [N] max probability of the first step (AdaptVis confidence)."""

    tokens: jax.Array
    completion_mask: jax.Array
    logprobs: jax.Array
    first_token_prob: jax.Array


def process_logits(logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """Temperature, top-k and top-p applied to logits [N, V] (float32); masked entries -1e30."""
    logits = logits.astype(jnp.float32)
    if sampling.temperature > 0:
        logits = logits / sampling.temperature
    if sampling.top_k > 0 and sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if sampling.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep a token if the mass strictly before it is below top_p (the top token always stays)
        keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < sampling.top_p
        keep = jnp.zeros_like(keep_sorted).at[
            jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, NEG_INF)
    return logits


def sample_token(logits: jax.Array, rng: jax.Array, sampling: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """(token int32 [N], its log-probability float32 [N]) from raw logits [N, V]."""
    processed = process_logits(logits, sampling)
    logp = jax.nn.log_softmax(processed, axis=-1)
    if sampling.temperature == 0:
        token = jnp.argmax(logits, axis=-1)
    else:
        token = jax.random.categorical(rng, processed, axis=-1)
    return token.astype(jnp.int32), jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnames=("config", "sampling", "eos_token_id", "pad_token_id"))
def generate(
    params: Params,
    inputs: dict[str, jax.Array],
    rng: jax.Array,
    *,
    config: ModelConfig,
    sampling: SamplingConfig,
    eos_token_id: int,
    pad_token_id: int,
    visual_scale: jax.Array | None = None,
) -> Samples:
    """Samples up to `sampling.max_new_tokens` tokens per row.

    Args:
      params: model params (traced: no recompilation when they change).
      inputs: left-padded prompt batch from `vlm.prepare_inputs` (every row ends with a real
        token, so the last position's logits start every row).
      rng: PRNG key.
      visual_scale: float [N] AdaptVis alpha for the prompt's last row in the prefill pass
        (METHODS §3: only the row that produces the first answer token is scaled); None = off.
    """
    steps = sampling.max_new_tokens
    batch, prompt_len = inputs["input_ids"].shape
    scale_rows = None
    if visual_scale is not None:
        scale_rows = jnp.ones((batch, prompt_len), jnp.float32).at[:, -1].set(visual_scale)
    logits, cache, _ = prefill(params, config, inputs, prompt_len + steps, visual_scale=scale_rows)
    first = jax.nn.softmax(process_logits(logits[:, -1], dataclasses.replace(sampling, top_k=0, top_p=1.0)))
    state = dict(
        step=jnp.zeros((), jnp.int32),
        cache=cache,
        logits=logits[:, -1],
        tokens=jnp.full((batch, steps), pad_token_id, jnp.int32),
        logprobs=jnp.zeros((batch, steps), jnp.float32),
        mask=jnp.zeros((batch, steps), bool),
        done=jnp.zeros((batch,), bool),
        rng=rng,
    )

    def cond(s):
        return (s["step"] < steps) & ~jnp.all(s["done"])

    def body(s):
        rng, key = jax.random.split(s["rng"])
        token, logp = sample_token(s["logits"], key, sampling)
        live = ~s["done"]
        token = jnp.where(live, token, pad_token_id)
        step = s["step"]
        tokens = s["tokens"].at[:, step].set(token)
        logprobs = s["logprobs"].at[:, step].set(jnp.where(live, logp, 0.0))
        mask = s["mask"].at[:, step].set(live)
        done = s["done"] | (token == eos_token_id)
        next_logits, cache, _ = decode_step(params, config, token, s["cache"])
        return dict(step=step + 1, cache=cache, logits=next_logits, tokens=tokens,
                    logprobs=logprobs, mask=mask, done=done, rng=rng)

    state = jax.lax.while_loop(cond, body, state)
    return Samples(state["tokens"], state["mask"], state["logprobs"], jnp.max(first, axis=-1))


def repeat_for_groups(examples: list, group_size: int) -> list:
    """[e0, e1] -> [e0 x G, e1 x G]: the G samples of a prompt are contiguous rows."""
    return [e for e in examples for _ in range(group_size)]


def completion_lengths(samples: Samples) -> np.ndarray:
    return np.asarray(jnp.sum(samples.completion_mask, axis=-1))
