"""Supervised step on interleaved box/depth traces (the SIFThinker warm-up before GRPO).

Loss: token-mean negative log-likelihood of the trace tokens (`loss_mask`), computed with the
vocabulary-chunked LM head; with `sft.answer_weight` != 1 a weighted mean whose answer tokens
(`loss_weights`) weigh more; with `sft.region_attention_weight` > 0 plus that weight times the
mean −log attention mass the trace rows put on the target region (`region_supervision`). The NLL is
exact under gradient accumulation: numerator (summed NLL) over the total number (weight) of target
tokens of all micro-batches.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from sif_jax import lora as lora_lib
from sif_jax import parallel, region_supervision
from sif_jax.batch import ModelInputs
from sif_jax.infer.lm_head import chunked_token_stats
from sif_jax.lora import LoraConfig
from sif_jax.model.family import family_of

Params = Any


def loss_weights(loss_mask: jax.Array, answer_start: jax.Array | None, answer_weight: float) -> jax.Array:
    """float32 [B, L] label weights: 1 on the trace labels of `loss_mask` (bool [B, L]) before
    column `answer_start` (int [B], `Batch.answer_start`), `answer_weight` from it on (the final
    `<answer>` tag, the answer, `</answer>` and eos), 0 off the labels. The answer is ~2% of a
    built-in trace's tokens (the boxes ~59%), so at weight 1 its loss barely moves the model."""
    mask = jnp.asarray(loss_mask, jnp.float32)
    if answer_weight == 1.0 or answer_start is None:
        return mask
    cols = jnp.arange(mask.shape[1])[None, :]
    return mask * jnp.where(cols >= jnp.asarray(answer_start)[:, None], jnp.float32(answer_weight), 1.0)


def sft_loss_terms(params: Params, inputs: ModelInputs | Mapping[str, jax.Array], loss_mask: jax.Array, *,
                   config: Any, vocab_chunk: int = 4096) -> tuple[jax.Array, jax.Array]:
    """(summed NLL, number of target tokens) for model inputs [B, L] (`collate_sft(...).inputs`, or
    the family's `prepare_inputs` dict) with labels `loss_mask` bool [B, L] (`Batch.loss_mask`), or
    label weights float [B, L] (`loss_weights`): then (weighted NLL sum, weight sum).

    Position t's hidden state predicts token t + 1, so the target of position t is counted
    when loss_mask[t + 1] is set.
    """
    return sft_loss_and_region_terms(params, inputs, loss_mask, config=config, vocab_chunk=vocab_chunk)[:2]


def sft_loss_and_region_terms(params: Params, inputs: ModelInputs | Mapping[str, jax.Array], loss_mask: jax.Array,
                              region_mask: jax.Array | None = None, *, config: Any, vocab_chunk: int = 4096,
                              region_layers: tuple[int, ...] = ()) -> tuple[jax.Array, ...]:
    """`sft_loss_terms` plus, with `region_mask` bool [B, L] and decoder `region_layers`, the
    region-attention terms of the same forward pass (`region_supervision.region_loss_terms`:
    Σ −log(ε + region mass) over the label rows, and their number); else those two are 0."""
    family = family_of(config)
    inputs = family.model_inputs(inputs)
    module = family.module(config)
    supervise = region_mask is not None and len(region_layers) > 0
    if supervise:
        (_, aux), state = module.apply({"params": params}, **inputs, return_hidden=True, mutable=["intermediates"],
                                       capture_intermediates=region_supervision.capture_filter(region_layers))
    else:
        _, aux = module.apply({"params": params}, **inputs, return_hidden=True)
    hidden = aux["hidden"][:, :-1]
    targets = inputs["input_ids"][:, 1:]
    mask = loss_mask[:, 1:].astype(jnp.float32)
    logp, _ = chunked_token_stats(hidden, family.lm_head_kernel(params, config), targets, temperature=1.0,
                                  chunk=min(vocab_chunk, config.text.vocab_size))
    zero = jnp.zeros((), jnp.float32)
    region_sum, region_rows = zero, zero
    if supervise:
        cos, sin = family.text_rope(config, inputs["positions"])
        mass = region_supervision.region_mass(state["intermediates"], region_layers, cos, sin,
                                              inputs["attention_mask"], region_mask)
        region_sum, region_rows = region_supervision.region_loss_terms(mass, loss_mask, region_mask)
    return -jnp.sum(logp * mask), jnp.sum(mask), region_sum, region_rows.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("config", "vocab_chunk", "lora", "grad_shardings",
                                             "region_weight", "region_layers"))
def sft_grads(params: Params, inputs: ModelInputs | Mapping[str, jax.Array], loss_mask: jax.Array,
              denominator: jax.Array, base: Params = None,
              dropout_rng: jax.Array | None = None, region_mask: jax.Array | None = None, *, config: Any,
              vocab_chunk: int = 4096, lora: LoraConfig | None = None, grad_shardings: tuple | None = None,
              region_weight: float = 0.0, region_layers: tuple[int, ...] = ()) -> tuple[Params, tuple[jax.Array, ...]]:
    """Gradient of summed NLL / `denominator` (the total target tokens of the whole step), plus
    `region_weight` × the mean region-attention term of this batch (`region_supervision`; with
    `region_mask` bool [B, L] and decoder `region_layers`). Returns (grads, (NLL sum, tokens,
    region-attention sum, its rows)).

    With `lora`, `params` are the adapters (`sif_jax.lora`), merged onto the frozen `base` inside
    the loss, and the gradient is the adapters'; `dropout_rng` (key data) draws the adapter dropout.
    grad_shardings: `parallel.sharding_leaves(params)`; the gradient is laid out like the params.
    """
    supervised = region_weight > 0 and region_mask is not None

    def loss_fn(p):
        if lora is not None:
            rng = None if dropout_rng is None else jax.random.wrap_key_data(dropout_rng)
            p = lora_lib.merge(base, p, lora.scale, dropout=lora.dropout, dropout_rng=rng)
        terms = sft_loss_and_region_terms(p, inputs, loss_mask, region_mask if supervised else None, config=config,
                                          vocab_chunk=vocab_chunk, region_layers=region_layers if supervised else ())
        num, _, region_sum, region_rows = terms
        loss = num / denominator
        if supervised:
            loss = loss + region_weight * region_sum / jnp.maximum(region_rows, 1.0)
        return loss, terms

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return parallel.constrain_leaves(grads, grad_shardings), aux
