"""KV cache and the decode path: prefill a prompt batch, then one token per row per step.

The cache has a static length S so that a whole generation compiles to two programs
(prefill, step). Slots are shared across rows: slot j of every row is written at step j,
left-padded rows simply keep their padding slots invalid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from sif_jax.batch import as_arrays
from sif_jax.model.config import ModelConfig
from sif_jax.model.family import family_of
from sif_jax.model.layers import DTYPES

Params = Any


@flax.struct.dataclass
class KVCache:
    """Keys/values of every decoder layer for a batch.

    keys, values: [layers, B, S, kv_heads, head_dim] in the compute dtype, or (`per_layer()`) a
    tuple of each layer's [B, S, kv_heads, head_dim]; `decode_step` returns the form it was given.
    valid: bool [B, S] slots holding a real token. visual: bool [B, S] slots holding an image
    token (the keys AdaptVis scales and the masses count). length: int32 [] slots written.
    next_position: int32 [B] position of the next token of each row (on every axis of the family's
    positions: the three M-RoPE axes, or the one 1-D axis).
    """

    keys: jax.Array
    values: jax.Array
    valid: jax.Array
    visual: jax.Array
    length: jax.Array
    next_position: jax.Array

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[1] if isinstance(self.keys, tuple) else self.keys.shape[2]

    def per_layer(self) -> KVCache:
        """This cache with keys/values as tuples of per-layer arrays. A decode loop over an
        unscanned decoder carries this form: each layer's array is then read and written in place
        by `decode_step` (a stacked array is sliced per layer and re-stacked, or copied whole, at
        every step; measured in benchmarks/RESULTS.md). A scanned decoder needs the stacked form."""
        if isinstance(self.keys, tuple):
            return self
        return self.replace(keys=tuple(self.keys), values=tuple(self.values))


def _pad_to(x: jax.Array, length: int, axis: int) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pad)


def prefill(
    params: Params,
    config: ModelConfig,
    inputs: dict[str, jax.Array],
    max_length: int,
    *,
    region_mask: jax.Array | None = None,
    visual_scale: jax.Array | None = None,
    return_attention_mass: Sequence[int] = (),
    last_logits_only: bool = False,
) -> tuple[jax.Array, KVCache, dict]:
    """Runs the prompt batch and fills a cache of `max_length` slots.

    Args:
      config: any family's config (`sif_jax.model.family`).
      inputs: the family's `prepare_inputs` dict or a `sif_jax.batch.ModelInputs` (input_ids,
        attention_mask, positions, images).
      max_length: cache slots S >= prompt length + tokens to generate (static).
      last_logits_only: run the LM head on the last position only (logits [B, 1, vocab]).

    Returns:
      (logits float32 [B, L, vocab], cache, aux of the forward pass).
    """
    inputs = as_arrays(inputs)
    prompt_len = inputs["input_ids"].shape[1]
    if max_length < prompt_len:
        raise ValueError(f"max_length={max_length} is shorter than the prompt ({prompt_len} tokens)")
    family = family_of(config)
    logits, aux = family.module(config).apply(
        {"params": params}, **family.model_inputs(inputs), region_mask=region_mask,
        visual_scale=visual_scale, return_attention_mass=return_attention_mass, return_kv=True,
        return_hidden=last_logits_only,
    )
    if last_logits_only:
        last = aux.pop("hidden")[:, -1:]
        head = family.lm_head_kernel(params, config).astype(last.dtype)
        logits = jnp.einsum("ble,ev->blv", last, head).astype(jnp.float32)
    keys, values = aux.pop("kv")
    dtype = DTYPES[config.dtype]
    cache = KVCache(
        keys=_pad_to(keys.astype(dtype), max_length, 2),
        values=_pad_to(values.astype(dtype), max_length, 2),
        valid=_pad_to(jnp.asarray(inputs["attention_mask"]).astype(bool), max_length, 1),
        visual=_pad_to(_image_positions(inputs, config), max_length, 1),
        length=jnp.asarray(prompt_len, jnp.int32),
        next_position=jnp.max(jnp.asarray(inputs["positions"]), axis=(0, 2)).astype(jnp.int32) + 1,
    )
    return logits, cache, aux


def _image_positions(inputs: dict, config: ModelConfig) -> jax.Array:
    """bool [B, L]: the prompt's image positions, from its `image_mask` when it carries one (as the
    model's embed does), else its image-pad ids."""
    if inputs.get("image_mask") is not None:
        return jnp.asarray(inputs["image_mask"]).astype(bool)
    return jnp.asarray(inputs["input_ids"]) == config.image_token_id


def decode_step(
    params: Params,
    config: ModelConfig,
    tokens: jax.Array,
    cache: KVCache,
    *,
    region_mask: jax.Array | None = None,
    visual_scale: jax.Array | None = None,
    return_attention_mass: Sequence[int] = (),
) -> tuple[jax.Array, KVCache, dict]:
    """Feeds one token per row and appends it to the cache.

    Args:
      tokens: int [B] the tokens to feed (text tokens).
      region_mask: bool [B, S] cache slots inside the target region (for the masses).
      visual_scale: float [B, 1] AdaptVis alpha for this step's query.

    Returns:
      (logits float32 [B, vocab], updated cache, aux with the attention masses [B, heads, 1]).
    """
    batch = tokens.shape[0]
    family = family_of(config)
    positions = jnp.broadcast_to(cache.next_position[None, :, None], (family.position_axes, batch, 1))
    slot = jax.nn.one_hot(cache.length, cache.max_length, dtype=bool)[None, :]
    valid = cache.valid | slot
    model = family.module(config)
    logits, aux = model.apply(
        {"params": params}, tokens[:, None].astype(jnp.int32), positions, (cache.keys, cache.values),
        cache.length, valid, cache.visual, region_mask=region_mask, visual_scale=visual_scale,
        return_attention_mass=return_attention_mass, method=type(model).decode_step,
    )
    keys, values = aux.pop("kv")
    new_cache = cache.replace(
        keys=keys, values=values, valid=valid, length=cache.length + 1,
        next_position=cache.next_position + 1,
    )
    return logits[:, 0], new_cache, aux
