"""Where the model looked: the attention each visual token received while the model wrote a completion.

    heat, visual_mass = visual_attention_map(params, prompt, completion, completion_mask, config=config,
                                             layers=(-1,))

`heat` float32 [N] is, for each of the prompt's N visual tokens (raster order, the order of the training
region masks), the attention probability its key received, averaged over the decoder `layers`, all
heads and **all completion tokens** (each token's own query row in a teacher-forced pass over prompt +
completion, EOS included: the rows and reduction of the TAS scoring pass). `visual_mass` is the mean
attention mass on all visual keys of the same rows; `heat.sum() == visual_mass` up to float error.
No AdaptVis scaling is applied: the map shows the model's own attention.

Two ways, one answer (tested against each other and against the scoring pass):

* `method="probabilities"` (default): one forward pass that records, for the requested layers, the
  attention queries and keys before the rotary embedding (the `q_proj` / `k_proj` outputs, or
  `q_norm` / `k_norm` where the family normalises them; Flax `capture_intermediates`); then the rotary
  (`family.text_rope`), GQA head sharing, the causal and padding masks and a float32 softmax give the
  probabilities of the completion rows over all keys, [heads, T, L] per layer. Cost: one forward
  plus O(layers * heads * T * L), whatever the number of visual tokens.
* `method="one_hot"`: the region-attention kernel itself, run on K copies of the sequence whose region
  masks are one-hot on the K visual tokens (`chunk` copies per decoder pass, with a progress bar), so
  copy j's region mass is exactly the probability of key j, through the training numerics. K / chunk
  decoder passes of `chunk` rows: a 1024 x 768 image (~1000 visual tokens) needs ~60 passes; used for
  the scanned layer layout (whose per-layer intermediates are not recorded) and as the reference.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sif_jax.infer.scoring import score_inputs
from sif_jax.model.config import ModelConfig
from sif_jax.model.family import family_of
from sif_jax.region_supervision import capture_filter, layer_qk, rotated_qk

Params = Any
METHODS = ("probabilities", "one_hot")


@functools.partial(jax.jit, static_argnames=("config",))
def _embed(params: Params, inputs: dict[str, jax.Array], *,
           config: ModelConfig) -> tuple[jax.Array, jax.Array | None]:
    """(the decoder's input embeddings [B, L, hidden], DeepStack features [levels, B, L, hidden] or None).

    Families whose `embed` returns a pair (Qwen3-VL: embeddings and DeepStack levels) give both; the
    others give their embeddings and None."""
    family = family_of(config)
    module = family.module(config)
    images = {k: v for k, v in family.model_inputs(inputs).items() if k not in ("attention_mask", "positions")}
    out = module.apply({"params": params}, **images, method=type(module).embed)
    return out if isinstance(out, tuple) else (out, None)


def _decoder_masses(module: Any, embeddings, positions, kv_valid, visual_mask, region_mask, layers, deepstack=None):
    extra = {} if deepstack is None else {"deepstack": deepstack}
    _, aux = module.text(embeddings, positions, kv_valid=kv_valid, visual_mask=visual_mask, region_mask=region_mask,
                         mass_layers=layers, return_hidden=True, **extra)
    return aux["attention_mass"]


@functools.partial(jax.jit, static_argnames=("config", "layers"))
def _one_hot_masses(params: Params, embeddings: jax.Array, positions: jax.Array, kv_valid: jax.Array,
                    visual_mask: jax.Array, region_masks: jax.Array, deepstack: jax.Array | None = None, *,
                    config: ModelConfig, layers: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """One sequence ([1, L, ...]; DeepStack [levels, 1, L, hidden]) run as K copies, copy k with region
    mask `region_masks[k]`. Returns region mass [K, L] and visual mass [K, L], averaged over `layers`
    and heads."""
    k, length = region_masks.shape
    rep = lambda x: jnp.broadcast_to(x, (k, *x.shape[1:]))
    if deepstack is not None:
        deepstack = jnp.broadcast_to(deepstack, (deepstack.shape[0], k, *deepstack.shape[2:]))
    masses = family_of(config).module(config).apply(
        {"params": params}, rep(embeddings), jnp.broadcast_to(positions, (positions.shape[0], k, length)),
        rep(kv_valid),
        rep(visual_mask), region_masks, layers, deepstack, method=_decoder_masses)
    region = jnp.mean(jnp.stack([masses[i]["region"] for i in layers]), axis=(0, 2))
    visual = jnp.mean(jnp.stack([masses[i]["visual"] for i in layers]), axis=(0, 2))
    return region, visual


@functools.partial(jax.jit, static_argnames=("config", "layers"))
def _row_probabilities(params: Params, inputs: dict[str, jax.Array], rows: jax.Array, *, config: ModelConfig,
                       layers: tuple[int, ...]) -> jax.Array:
    """float32 [layers, heads, T, L]: attention probabilities of query rows `rows` (int [T]) of the one-row
    batch `inputs` over all L keys, per requested layer and head."""
    family = family_of(config)
    _, state = family.module(config).apply({"params": params}, **family.model_inputs(inputs), return_hidden=True,
                                           capture_intermediates=capture_filter(layers), mutable=["intermediates"])
    tree = state["intermediates"]
    cos, sin = family.text_rope(config, inputs["positions"])  # [1, L, head_dim]
    length = inputs["input_ids"].shape[1]
    valid = inputs["attention_mask"][0].astype(bool)
    keys_pos = jnp.arange(length)
    allowed = (keys_pos[None, :] <= rows[:, None]) & valid[None, :]  # [T, L]: causal and not padding
    out = []
    for i in layers:
        q, k = layer_qk(tree, i)
        if q is None or k is None:
            raise ValueError(f"attention map: layer {i}'s queries / keys were not recorded (unrolled layers named "
                             "text/layers_{i} with q_proj / k_proj are needed; use method='one_hot')")
        q, k = rotated_qk(q, k, cos, sin)
        q, k = q[0], k[0]  # [L, H, D]
        logits = jnp.einsum("thd,lhd->htl", q[rows], k) / jnp.sqrt(jnp.float32(q.shape[-1]))
        logits = jnp.where(allowed[None], logits, -jnp.inf)
        out.append(jax.nn.softmax(logits, axis=-1))
    return jnp.stack(out)


def _inputs(prompt: Any, completion: Any, completion_mask: Any, config: ModelConfig):
    prompt = family_of(config).model_inputs(prompt)
    if np.shape(prompt["input_ids"])[0] != 1:
        raise ValueError("visual_attention_map: expects a one-row prompt batch")
    inputs = score_inputs(prompt, jnp.asarray(completion), jnp.asarray(completion_mask),
                          image_token_id=config.image_token_id, config=config)
    valid = np.asarray(inputs["attention_mask"]).astype(bool)
    is_visual = np.asarray(inputs["image_mask"]) & valid  # the prompt's image positions only
    prompt_len = np.shape(prompt["input_ids"])[1]
    rows = prompt_len + np.flatnonzero(np.asarray(completion_mask, bool)[0])
    return inputs, valid, is_visual, np.flatnonzero(is_visual[0]), rows


def visual_attention_map(
    params: Params,
    prompt: Any,
    completion: Any,
    completion_mask: Any,
    *,
    config: ModelConfig,
    layers: Sequence[int] = (-1,),
    chunk: int = 16,
    method: str | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, float]:
    """Attention each visual token received, averaged over `layers`, heads and the completion tokens.

    Args:
      prompt: the `ModelInputs` of a one-row prompt batch (`batching.collate(...).inputs`);
        completion int [1, T]; completion_mask bool [1, T].
      layers: decoder layers (negative = from the end).
      chunk: copies of the sequence per decoder pass (method "one_hot").
      method: "probabilities" or "one_hot" (module doc); None = "probabilities", or "one_hot" for a
        scanned layer layout.
      progress: show a tqdm bar over the one-hot passes.

    Returns:
      (heat float32 [N] over the row's visual tokens in raster order, the mean visual mass of the
      same rows — equal to heat.sum() up to float error).

    Raises:
      ValueError: a batch of more than one row, or an unknown method.
    """
    if method is None:
        method = "one_hot" if getattr(config, "scan_layers", False) else "probabilities"
    if method not in METHODS:
        raise ValueError(f"visual_attention_map: method={method!r}, expected one of {METHODS}")
    layers = tuple(sorted({int(i) % config.text.num_layers for i in layers}))
    inputs, valid, is_visual, visual_positions, rows = _inputs(prompt, completion, completion_mask, config)
    if len(visual_positions) == 0 or len(rows) == 0:
        return np.zeros(len(visual_positions), np.float32), 0.0
    if method == "probabilities":
        probs = np.asarray(_row_probabilities(params, inputs, jnp.asarray(rows, jnp.int32), config=config,
                                              layers=layers), np.float64)  # [layers, H, T, L]
        per_key = probs.mean(axis=(0, 1, 2))  # [L]
        heat = per_key[visual_positions]
        return heat.astype(np.float32), float(heat.sum())
    return _one_hot_map(params, inputs, valid, is_visual, visual_positions, rows, config=config, layers=layers,
                        chunk=chunk, progress=progress)


def _one_hot_map(params, inputs, valid, is_visual, visual_positions, rows, *, config, layers, chunk, progress):
    from tqdm import tqdm

    embeddings, deepstack = _embed(params, inputs, config=config)
    length = np.shape(inputs["input_ids"])[1]
    chunk = max(1, min(chunk, len(visual_positions)))
    heat = np.zeros(len(visual_positions), np.float64)
    visual_mass = 0.0
    starts = range(0, len(visual_positions), chunk)
    for start in tqdm(starts, desc="heat-map passes", disable=not progress or len(starts) < 2, leave=False):
        part = visual_positions[start:start + chunk]
        one_hot = np.zeros((chunk, length), bool)
        one_hot[np.arange(len(part)), part] = True  # padding copies: an all-false mask
        region, visual = _one_hot_masses(params, embeddings, inputs["positions"], jnp.asarray(valid),
                                         jnp.asarray(is_visual), jnp.asarray(one_hot), deepstack, config=config,
                                         layers=layers)
        region = np.asarray(region, np.float64)
        heat[start:start + len(part)] = region[: len(part)][:, rows].mean(axis=1)
        visual_mass = float(np.asarray(visual, np.float64)[0, rows].mean())
    return heat.astype(np.float32), visual_mass
