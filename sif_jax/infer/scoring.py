"""The teacher-forced scoring pass over prompt + completion.

One forward returns, per completion token: its log-probability, the entropy of the distribution
that produced it, and the attention mass its query row put on the target region and on all visual
keys (from the region-attention kernel, averaged over the configured layers and heads). The LM
head runs over vocabulary chunks inside a scan, so [N, T, V] logits are never all live.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from sif_jax.batch import ModelInputs, as_arrays
from sif_jax.infer.groups import repeat_rows, shares_prompts, unique_prompts
from sif_jax.infer.lm_head import chunked_token_stats
from sif_jax.lora import dequantize_params
from sif_jax.model.family import family_of

Params = Any


@flax.struct.dataclass
class Scores:
    """logprobs, entropies, region_mass, visual_mass: float32 [N, T] (0 where masked)."""

    logprobs: jax.Array
    entropies: jax.Array
    region_mass: jax.Array
    visual_mass: jax.Array


def prompt_image_mask(prompt: ModelInputs | Mapping[str, jax.Array], image_token_id: int) -> jax.Array:
    """bool [N, L]: the prompt's image positions: its `image_mask`, else its image-pad tokens (as
    the prefill of `cache.prefill` reads them; `vlm.prepare_inputs` has checked them against the images)."""
    prompt = as_arrays(prompt)
    if "image_mask" in prompt:
        return jnp.asarray(prompt["image_mask"]).astype(bool)
    return jnp.asarray(prompt["input_ids"]) == image_token_id


def score_inputs(
    prompt: ModelInputs | Mapping[str, jax.Array], completion: jax.Array, completion_mask: jax.Array, *,
    image_token_id: int, config: Any = None,
) -> dict[str, jax.Array]:
    """Prompt batch + completions -> model inputs over [N, L + T].

    Modality comes from the prompt's layout only: `image_mask` [N, L + T] is the prompt's image
    positions (`prompt_image_mask`) extended with False, so a completion token is text whatever its
    id (an image-pad id the policy sampled is embedded as a token, is no visual key and takes no
    vision feature, exactly as in the KV-cache decode). Completion positions continue each row's
    positions (every axis: [3, N, L] M-RoPE or [1, N, L] 1-D) from max(prompt positions) + 1
    (`cache.KVCache.next_position`). `config` picks the model arrays of `prompt` (its family's
    `model_inputs`); None keeps Qwen2.5-VL's.
    """
    if config is None:
        from sif_jax.model.vlm import model_inputs
    else:
        model_inputs = family_of(config).model_inputs
    prompt = as_arrays(prompt)
    n, steps = completion.shape
    next_position = jnp.max(prompt["positions"], axis=(0, 2)) + 1
    completion_positions = next_position[:, None] + jnp.arange(steps)[None, :]
    inputs = dict(model_inputs(prompt))
    inputs["input_ids"] = jnp.concatenate([prompt["input_ids"], completion.astype(jnp.int32)], axis=1)
    inputs["attention_mask"] = jnp.concatenate(
        [prompt["attention_mask"], completion_mask.astype(prompt["attention_mask"].dtype)], axis=1)
    inputs["image_mask"] = jnp.concatenate(
        [prompt_image_mask(prompt, image_token_id), jnp.zeros((n, steps), bool)], axis=1)
    if "image_token_index" in inputs:  # completion tokens are text: index 0, unused
        inputs["image_token_index"] = jnp.concatenate(
            [prompt["image_token_index"], jnp.zeros((n, steps), prompt["image_token_index"].dtype)], axis=1)
    inputs["positions"] = jnp.concatenate(
        [prompt["positions"], jnp.broadcast_to(
            completion_positions[None], (prompt["positions"].shape[0], n, steps)).astype(prompt["positions"].dtype)],
        axis=2)
    return inputs


@functools.partial(jax.jit, static_argnames=("config", "mass_layers", "temperature", "vocab_chunk", "group_size"))
def score(
    params: Params,
    prompt: ModelInputs | Mapping[str, jax.Array],
    completion: jax.Array,
    completion_mask: jax.Array,
    region_mask: jax.Array | None = None,
    *,
    config: Any,
    mass_layers: Sequence[int] = (),
    temperature: float = 1.0,
    vocab_chunk: int = 4096,
    group_size: int = 1,
) -> Scores:
    """Teacher-forced pass; differentiable in `params` through `logprobs`.

    Args:
      prompt: left-padded prompt batch [N, L]: a `ModelInputs` or the family's `prepare_inputs` dict.
      config: any family's config (`sif_jax.model.family`).
      completion: int [N, T]; completion_mask: bool [N, T].
      region_mask: bool [N, L] prompt keys inside the target region (None: no masses).
      mass_layers: decoder layers whose masses are averaged (with the heads).
      temperature: log-probs and entropies are of the temperature-scaled distribution.
      group_size: G > 1 declares rows [g * G, (g + 1) * G) copies of one prompt: the prompt runs
        once per group (`shared_prefix_hidden`, for the families of `groups.shares_prompts`:
        Qwen2.5-VL, LLaVA-1.5 and Qwen3-VL; others run every row) and its G completions attend to its
        keys/values; the result (and its gradient, which sums the G completions' through the
        prompt) equals group_size=1 up to float rounding.

    Token t's entropy and log-prob come from the hidden state before it (position L + t - 1);
    its attention masses from its own query row (position L + t). Image positions are the
    prompt's only (`score_inputs`), so for any sampled ids the log-probs and masses equal those
    of the KV-cache decode (`sampler.generate`) that produced them. Log-probs are of the model's
    full-vocabulary distribution (no top-k / top-p, no banned ids). `params` may be a LoRA base
    with quantised kernels (`lora.quantize_base`, the adapter-off KL reference): they are
    dequantised here, inside the jitted pass.
    """
    prompt = as_arrays(prompt)
    params = dequantize_params(params)
    prompt_len = prompt["input_ids"].shape[1]
    steps = completion.shape[1]
    family = family_of(config)
    full_region = None
    want_mass = region_mask is not None and len(mass_layers) > 0
    if want_mass:
        full_region = jnp.concatenate([region_mask, jnp.zeros_like(completion_mask, bool)], axis=1)
    layers = tuple(mass_layers) if want_mass else ()
    if group_size > 1 and shares_prompts(config):  # the shared-prefix pass (other families: unshared)
        hidden, aux = shared_prefix_hidden(params, prompt, completion, completion_mask, full_region, config=config,
                                           mass_layers=layers, group_size=group_size)
        prompt_len = 0  # masses below are already the completion rows'
    else:
        inputs = score_inputs(prompt, completion, completion_mask, image_token_id=config.image_token_id,
                              config=config)
        _, aux = family.module(config).apply(
            {"params": params}, **inputs, region_mask=full_region, return_attention_mass=layers, return_hidden=True,
        )
        hidden = aux["hidden"][:, prompt_len - 1 : prompt_len - 1 + steps]
    logprobs, entropies = chunked_token_stats(
        hidden, family.lm_head_kernel(params, config), completion, temperature=temperature,
        chunk=min(vocab_chunk, config.text.vocab_size),
    )
    mask = completion_mask.astype(jnp.float32)
    zeros = jnp.zeros_like(mask)
    region_mass = visual_mass = zeros
    if want_mass:
        masses = aux["attention_mass"]
        region_mass = jnp.mean(jnp.stack([masses[i]["region"] for i in mass_layers]), axis=(0, 2))
        visual_mass = jnp.mean(jnp.stack([masses[i]["visual"] for i in mass_layers]), axis=(0, 2))
        region_mass = region_mass[:, prompt_len:] * mask
        visual_mass = visual_mass[:, prompt_len:] * mask
    return Scores(logprobs * mask, entropies * mask, region_mass, visual_mass)


def shared_prefix_hidden(
    params: Params,
    prompt: ModelInputs | Mapping[str, jax.Array],
    completion: jax.Array,
    completion_mask: jax.Array,
    region_mask: jax.Array | None,
    *,
    config: Any,
    mass_layers: tuple[int, ...],
    group_size: int,
) -> tuple[jax.Array, dict]:
    """The hidden states that predict each completion token, with each prompt run once for its G rows.

    The P = N / G unique prompts (`groups.unique_prompts`) run with their keys/values returned;
    those are copied to the G rows of each group and the completions run after them
    (the family module's `extend`: `vlm.Qwen25VL.extend`, `llava.model.Llava.extend`,
    `qwen3_vl.model.Qwen3VL.extend`): completion
    query t attends to its prompt's keys and completion keys 0..t, with the validity, visual and
    region masks of `score_inputs`' [N, L + T] layout.

    Args:
      prompt: [N, L] prompt batch, G copies per prompt. completion: int [N, T]; completion_mask
        bool [N, T]. region_mask: bool [N, L + T] or None.

    Returns:
      (hidden [N, T, hidden]: position L - 1 + t of the full forward for token t, aux of the
      completion pass, whose masses are [N, heads, T] over the completion's own query rows).
    """
    prompt = as_arrays(prompt)
    module = family_of(config).module(config)
    unique = unique_prompts(prompt, group_size, config)
    _, prompt_aux = module.apply({"params": params}, **unique, return_kv=True, return_hidden=True)
    keys, values = prompt_aux["kv"]
    prefix_kv = (repeat_rows(keys, group_size, 1), repeat_rows(values, group_size, 1))
    last = repeat_rows(prompt_aux["hidden"][:, -1:], group_size)
    inputs = score_inputs(prompt, completion, completion_mask, image_token_id=config.image_token_id, config=config)
    prompt_len = prompt["input_ids"].shape[1]
    _, aux = module.apply(
        {"params": params}, completion.astype(jnp.int32), inputs["positions"][:, :, prompt_len:], prefix_kv,
        inputs["attention_mask"].astype(bool), inputs["image_mask"], region_mask=region_mask,
        return_attention_mass=mass_layers, return_hidden=True, method=type(module).extend,
    )
    hidden = jnp.concatenate([last.astype(aux["hidden"].dtype), aux["hidden"][:, :-1]], axis=1)
    return hidden, aux
