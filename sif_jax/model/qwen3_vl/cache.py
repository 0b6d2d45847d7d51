"""KV cache prefill and decode step for Qwen3-VL (the `sif_jax.model.cache.KVCache` structure).

DeepStack only touches image positions, which are all in the prompt, so the decode step is the
plain decoder over the cache (as transformers, which passes no vision inputs after prefill).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from sif_jax.batch import as_arrays
from sif_jax.model.cache import KVCache
from sif_jax.model.layers import DTYPES
from sif_jax.model.qwen3_vl.config import Qwen3VLConfig
from sif_jax.model.qwen3_vl.model import Qwen3VL, model_inputs

Params = Any


def _pad_to(x: jax.Array, length: int, axis: int) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pad)


def _image_positions(inputs: dict, config: Qwen3VLConfig) -> jax.Array:
    if inputs.get("image_mask") is not None:
        return jnp.asarray(inputs["image_mask"]).astype(bool)
    return jnp.asarray(inputs["input_ids"]) == config.image_token_id


def prefill(
    params: Params,
    config: Qwen3VLConfig,
    inputs: dict[str, jax.Array],
    max_length: int,
    *,
    region_mask: jax.Array | None = None,
    visual_scale: jax.Array | None = None,
    return_attention_mass: Sequence[int] = (),
) -> tuple[jax.Array, KVCache, dict]:
    """Runs the prompt batch (from `model.prepare_inputs`, or a `sif_jax.batch.ModelInputs`) and fills a
    cache of `max_length` slots.

    Returns (logits float32 [B, L, vocab], cache, aux of the forward pass). Raises ValueError when
    `max_length` is shorter than the prompt.
    """
    inputs = as_arrays(inputs)
    prompt_len = inputs["input_ids"].shape[1]
    if max_length < prompt_len:
        raise ValueError(f"max_length={max_length} is shorter than the prompt ({prompt_len} tokens)")
    logits, aux = Qwen3VL(config).apply(
        {"params": params}, **model_inputs(inputs), region_mask=region_mask, visual_scale=visual_scale,
        return_attention_mass=return_attention_mass, return_kv=True,
    )
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


def decode_step(
    params: Params,
    config: Qwen3VLConfig,
    tokens: jax.Array,
    cache: KVCache,
    *,
    region_mask: jax.Array | None = None,
    visual_scale: jax.Array | None = None,
    return_attention_mass: Sequence[int] = (),
) -> tuple[jax.Array, KVCache, dict]:
    """Feeds one text token per row (int [B]) and appends it to the cache.

    region_mask: bool [B, S] cache slots inside the target region; visual_scale: float [B, 1].
    Returns (logits float32 [B, vocab], updated cache, aux with masses [B, heads, 1]).
    """
    batch = tokens.shape[0]
    positions = jnp.broadcast_to(cache.next_position[None, :, None], (3, batch, 1))
    slot = jax.nn.one_hot(cache.length, cache.max_length, dtype=bool)[None, :]
    valid = cache.valid | slot
    logits, aux = Qwen3VL(config).apply(
        {"params": params}, tokens[:, None].astype(jnp.int32), positions, (cache.keys, cache.values),
        cache.length, valid, cache.visual, region_mask=region_mask, visual_scale=visual_scale,
        return_attention_mass=return_attention_mass, method=Qwen3VL.decode_step,
    )
    keys, values = aux.pop("kv")
    new_cache = cache.replace(keys=keys, values=values, valid=valid, length=cache.length + 1,
                              next_position=cache.next_position + 1)
    return logits[:, 0], new_cache, aux
