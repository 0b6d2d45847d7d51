"""Qwen3-VL: vision features (and DeepStack features) scattered into the decoder's image pads.

Two layers of API, as `sif_jax.model.vlm` for Qwen2.5-VL:
- `Qwen3VL` (Flax Linen, pure): consumes only arrays, including the host-computed geometry
  (M-RoPE positions, vision segments, position-table taps).
- `prepare_inputs` / `forward`: accept the arrays HF's processor produces for
  `Qwen3VLForConditionalGeneration.forward` (`input_ids`, `attention_mask`, `pixel_values`
  [N, 1536], `image_grid_thw`) and compute the geometry on the host.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sif_jax.batch import ModelInputs, as_arrays
from sif_jax.model.qwen3_vl.config import Qwen3VLConfig
from sif_jax.model.qwen3_vl.geometry import vision_geometry
from sif_jax.model.qwen3_vl.language import Qwen3VLDecoder
from sif_jax.model.qwen3_vl.vision import Qwen3VLVisionTower
from sif_jax.model.rope import get_rope_index, image_token_runs

Params = Any

MODEL_INPUTS = ("input_ids", "attention_mask", "positions", "pixel_values", "patch_positions", "frame_segments",
                "pos_indices", "pos_weights", "image_token_index", "image_mask")


class Qwen3VL(nn.Module):
    """Qwen3-VL in Flax Linen. Call as `Qwen3VL(config).apply({'params': p}, **inputs)`."""

    config: Qwen3VLConfig

    def setup(self) -> None:
        c = self.config
        self.visual = Qwen3VLVisionTower(c.vision, c.attention_backend, c.dtype, c.param_dtype, c.scan_layers,
                                         c.remat_policy)
        self.text = Qwen3VLDecoder(c.text, c.attention_backend, c.dtype, c.param_dtype, c.scan_layers,
                                   c.remat_policy)

    def image_positions(self, input_ids: jax.Array, image_mask: jax.Array | None) -> jax.Array:
        """bool [B, L]: `image_mask`, or where it is None the image-pad tokens of `input_ids`."""
        if image_mask is None:
            return input_ids == self.config.image_token_id
        return image_mask.astype(bool)

    def embed(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array | None = None,
        patch_positions: jax.Array | None = None,
        frame_segments: jax.Array | None = None,
        pos_indices: jax.Array | None = None,
        pos_weights: jax.Array | None = None,
        image_token_index: jax.Array | None = None,
        image_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array | None]:
        """(token embeddings [B, L, hidden] with the image positions replaced by vision features,
        DeepStack features [levels, B, L, hidden] (zeros off the image positions) or None).

        Image positions and the feature each takes as `sif_jax.model.vlm.Qwen25VL.embed`: the
        k-th image position of the batch (row-major, HF's `masked_scatter`) takes the k-th merged
        feature, or with `image_token_index` [B, L] that feature row.
        """
        embeddings = self.text.embed(input_ids)
        if pixel_values is None:
            return embeddings, None
        features, deepstack = self.visual(pixel_values, patch_positions, frame_segments, pos_indices, pos_weights)
        is_image = self.image_positions(input_ids, image_mask)
        if image_token_index is None:
            index = jnp.cumsum(is_image.reshape(-1)).reshape(is_image.shape) - 1
        else:
            index = image_token_index
        index = jnp.clip(index, 0, features.shape[0] - 1)
        embeddings = jnp.where(is_image[..., None], features.astype(embeddings.dtype)[index], embeddings)
        if deepstack.shape[0] == 0:
            return embeddings, None
        levels = jnp.where(is_image[None, ..., None], deepstack.astype(embeddings.dtype)[:, index], 0)
        return embeddings, levels

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        positions: jax.Array,
        pixel_values: jax.Array | None = None,
        patch_positions: jax.Array | None = None,
        frame_segments: jax.Array | None = None,
        pos_indices: jax.Array | None = None,
        pos_weights: jax.Array | None = None,
        image_token_index: jax.Array | None = None,
        image_mask: jax.Array | None = None,
        *,
        region_mask: jax.Array | None = None,
        visual_scale: jax.Array | None = None,
        return_attention_mass: Sequence[int] = (),
        return_kv: bool = False,
        return_hidden: bool = False,
    ) -> tuple[jax.Array | None, dict]:
        """Full forward over a (padded) batch.

        Args:
          input_ids: int [B, L]; attention_mask: {0,1} [B, L]; positions: int [3, B, L].
          pixel_values, patch_positions, frame_segments, pos_indices, pos_weights: the images of the
            batch and their geometry (see `prepare_inputs`); None for text only.
          image_token_index, image_mask: see `embed`.
          region_mask: bool [B, L] keys inside the target region (padded-sequence coordinates).
          visual_scale: float [B, L] AdaptVis alpha per query row (1.0 = untouched).
          return_attention_mass: decoder layer indices whose region/visual masses to return.
          return_kv: also return the keys/values of every layer (for a KV cache).
          return_hidden: skip the LM head; aux["hidden"] = final hidden states [B, L, hidden].

        Returns:
          logits float32 [B, L, vocab] (None with return_hidden) and aux: {"attention_mass":
          {layer: {"region", "visual"}: [B, heads, L]}, "kv": ([layers, B, L, kv_heads, head_dim],
          same) if return_kv, "hidden": [B, L, hidden] if return_hidden}.
        """
        embeddings, deepstack = self.embed(input_ids, pixel_values, patch_positions, frame_segments, pos_indices,
                                           pos_weights, image_token_index, image_mask)
        return self.text(
            embeddings, positions,
            kv_valid=attention_mask.astype(bool),
            visual_mask=self.image_positions(input_ids, image_mask),
            visual_scale=visual_scale,
            region_mask=region_mask,
            deepstack=deepstack,
            mass_layers=tuple(return_attention_mass),
            return_kv=return_kv,
            return_hidden=return_hidden,
        )

    def extend(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        prefix_kv: tuple[jax.Array, jax.Array],
        kv_valid: jax.Array,
        visual_mask: jax.Array,
        *,
        region_mask: jax.Array | None = None,
        return_attention_mass: Sequence[int] = (),
        return_hidden: bool = False,
    ) -> tuple[jax.Array | None, dict]:
        """Text tokens continuing a prefix that was run before (e.g. completions after a shared prompt).

        Args:
          input_ids: int [B, L] (embedded as text, no DeepStack input); positions: int [3, B, L].
          prefix_kv: (keys, values) [layers, B, P, kv_heads, head_dim], the prefix's aux["kv"].
          kv_valid, visual_mask, region_mask: bool [B, P + L] over the prefix's keys then these.
          return_attention_mass, return_hidden: as `__call__` (masses [B, heads, L] of these rows).

        Returns:
          As `__call__` over these L positions: query i attends to the prefix and to tokens 0..i,
          so the result equals the full forward's last L positions of [prefix, input_ids] when the
          prefix holds every image position (DeepStack adds to image positions only, and the
          prefix's keys/values already carry it; `Qwen3VLDecoder`'s `prefix_kv`).
        """
        return self.text(
            self.text.embed(input_ids), positions,
            kv_valid=kv_valid, visual_mask=visual_mask, region_mask=region_mask,
            mass_layers=tuple(return_attention_mass), prefix_kv=prefix_kv, return_hidden=return_hidden,
        )

    def decode_step(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        cache_kv: tuple[jax.Array, jax.Array],
        cache_index: jax.Array,
        kv_valid: jax.Array,
        visual_mask: jax.Array,
        *,
        region_mask: jax.Array | None = None,
        visual_scale: jax.Array | None = None,
        return_attention_mass: Sequence[int] = (),
    ) -> tuple[jax.Array, dict]:
        """One text token per row against a KV cache (see cache.py). input_ids int [B, 1]."""
        return self.text(
            self.text.embed(input_ids), positions,
            kv_valid=kv_valid, visual_mask=visual_mask, visual_scale=visual_scale,
            region_mask=region_mask, mass_layers=tuple(return_attention_mass),
            cache_kv=cache_kv, cache_index=cache_index,
        )


def count_image_tokens(image_grid_thw: np.ndarray, config: Qwen3VLConfig) -> int:
    grids = np.asarray(image_grid_thw).reshape(-1, 3)
    return int(np.sum(np.prod(grids, axis=-1)) // config.vision.merge_unit)


def prepare_inputs(
    config: Qwen3VLConfig,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    pixel_values: np.ndarray | None = None,
    image_grid_thw: np.ndarray | None = None,
    *,
    pad_patches_to: int | None = None,
    batch_images: bool = False,
) -> dict[str, np.ndarray]:
    """Host-side: HF-processor arrays -> the arrays `Qwen3VL.__call__` consumes.

    Checks that the image-pad tokens match the images, computes M-RoPE positions (as HF's
    `Qwen3VLModel.get_rope_index` for images: the same layout as Qwen2.5-VL, see
    `sif_jax.model.rope.get_rope_index`) and the vision geometry. `pad_patches_to` pads the flat
    patch list to a bucket; with `batch_images` each image becomes a row padded to
    `pad_patches_to` patches, with `image_token_index` [B, L].

    Returns a dict with input_ids int32 [B, L], attention_mask int32 [B, L], positions int32
    [3, B, L], rope_deltas int32 [B] and, with images, pixel_values float32, patch_positions,
    frame_segments, pos_indices, pos_weights (and image_token_index).

    Raises:
      ValueError: shapes that disagree, out-of-vocabulary ids, image-pad tokens that do not match
        the grids, or patches that do not match the grids (the message names the field).
    """
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length]; got shape {input_ids.shape}")
    attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {attention_mask.shape}, input_ids {input_ids.shape}")
    vocab = config.text.vocab_size
    if (input_ids >= vocab).any() or (input_ids < 0).any():
        bad = input_ids[(input_ids >= vocab) | (input_ids < 0)][0]
        raise ValueError(f"input_ids holds token {bad}, outside [0, vocab_size={vocab})")
    n_pads = int(np.sum((input_ids == config.image_token_id) & (attention_mask > 0)))
    inputs: dict[str, np.ndarray] = {"input_ids": input_ids.astype(np.int32),
                                     "attention_mask": attention_mask.astype(np.int32)}
    if pixel_values is None:
        if n_pads:
            raise ValueError(f"input_ids hold {n_pads} image-pad tokens but no pixel_values")
        image_grid_thw = None
    else:
        if image_grid_thw is None:
            raise ValueError("pixel_values given without image_grid_thw")
        n_features = count_image_tokens(image_grid_thw, config)
        if n_pads != n_features:
            raise ValueError(
                f"image features and image tokens do not match: input_ids hold {n_pads} image-pad tokens "
                f"(id {config.image_token_id}), image_grid_thw gives {n_features} features")
        grids = np.asarray(image_grid_thw).reshape(-1, 3)
        n_patches = int(np.sum(np.prod(grids, axis=-1)))
        pixel_values = np.asarray(pixel_values, dtype=np.float32)
        if pixel_values.ndim != 2 or pixel_values.shape != (n_patches, config.vision.patch_dim):
            raise ValueError(f"pixel_values has shape {pixel_values.shape}; image_grid_thw needs "
                             f"[{n_patches}, {config.vision.patch_dim}]")
        if batch_images:
            inputs.update(_batched_images(config, input_ids, attention_mask, pixel_values, grids, pad_patches_to))
        else:
            geometry = vision_geometry(grids, config.vision, pad_to=pad_patches_to)
            if pad_patches_to is not None:
                pixel_values = np.concatenate(
                    [pixel_values, np.zeros((pad_patches_to - n_patches, pixel_values.shape[1]), np.float32)])
            inputs["pixel_values"] = pixel_values
            inputs.update(geometry.as_dict())
    positions, rope_deltas = get_rope_index(input_ids, image_grid_thw, attention_mask, config)  # type: ignore[arg-type]
    inputs["positions"] = positions
    inputs["rope_deltas"] = rope_deltas
    return inputs


def _batched_images(
    config: Qwen3VLConfig,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    pixel_values: np.ndarray,
    grids: np.ndarray,
    patches_per_image: int | None,
) -> dict[str, np.ndarray]:
    counts = np.prod(grids, axis=-1)
    if patches_per_image is None:
        raise ValueError("batch_images=True needs pad_patches_to (the patches of each image row)")
    if counts.max() > patches_per_image:
        raise ValueError(
            f"pad_patches_to={patches_per_image}: image {int(np.argmax(counts))} has {int(counts.max())} patches")
    starts = np.concatenate([[0], np.cumsum(counts)])
    pixels = np.zeros((len(grids), patches_per_image, pixel_values.shape[1]), np.float32)
    geometry: dict[str, list] = {k: [] for k in ("patch_positions", "frame_segments", "pos_indices", "pos_weights")}
    for i, grid in enumerate(grids):
        pixels[i, : counts[i]] = pixel_values[starts[i]: starts[i + 1]]
        for k, v in vision_geometry(grid[None], config.vision, pad_to=patches_per_image).as_dict().items():
            geometry[k].append(v)
    per_image = patches_per_image // config.vision.merge_unit
    index = np.zeros(input_ids.shape, np.int32)
    image = 0
    for row in range(input_ids.shape[0]):
        valid = np.flatnonzero(attention_mask[row] > 0)
        for start, end in image_token_runs(input_ids[row][valid], config.image_token_id):
            index[row, valid[start:end]] = image * per_image + np.arange(end - start)
            image += 1
    out = {k: np.stack(v) for k, v in geometry.items()}
    out["pixel_values"] = pixels
    out["image_token_index"] = index
    return out


def model_inputs(inputs: ModelInputs | Mapping[str, Any]) -> dict[str, Any]:
    """The subset of `prepare_inputs`' output (or of a `sif_jax.batch.ModelInputs`) that `Qwen3VL.__call__` takes."""
    inputs = as_arrays(inputs)
    return {k: inputs[k] for k in MODEL_INPUTS if k in inputs}


def forward(
    params: Params,
    config: Qwen3VLConfig,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    pixel_values: np.ndarray | None = None,
    image_grid_thw: np.ndarray | None = None,
    **kwargs: Any,
) -> tuple[jax.Array, dict]:
    """HF-style forward: the same input arrays as `Qwen3VLForConditionalGeneration.forward`
    (M-RoPE positions computed from the image-pad runs, as HF does from `mm_token_type_ids`).

    Returns logits float32 [B, L, vocab] and the aux dict of `Qwen3VL.__call__`.
    """
    inputs = prepare_inputs(config, input_ids, attention_mask, pixel_values, image_grid_thw)
    return Qwen3VL(config).apply({"params": params}, **model_inputs(inputs), **kwargs)


def _dummy_inputs(config: Qwen3VLConfig) -> dict[str, np.ndarray]:
    """A one-image batch that touches every parameter, for `init`."""
    m = config.vision.spatial_merge_size
    ids = np.array([[config.vision_start_token_id, config.image_token_id, config.vision_end_token_id,
                     config.eos_token_id]], np.int32)
    pixels = np.zeros((m * m, config.vision.patch_dim), np.float32)
    return model_inputs(prepare_inputs(config, ids, None, pixels, np.array([[1, m, m]])))


def _init_boxed(config: Qwen3VLConfig, rng: jax.Array) -> Params:
    return Qwen3VL(config).init(rng, **_dummy_inputs(config))["params"]


def init_params(config: Qwen3VLConfig, rng: jax.Array) -> Params:
    """Random parameters (plain arrays); works under `jax.eval_shape`. Layouts as
    `sif_jax.model.vlm.init_params` (`text/layers_{i}`, `visual/blocks_{i}`, or stacked)."""
    return nn.unbox(_init_boxed(config, rng))


def abstract_boxed_params(config: Qwen3VLConfig) -> Params:
    """ShapeDtypeStructs of the params inside their `nn.LogicallyPartitioned` boxes."""
    return jax.eval_shape(functools.partial(_init_boxed, config), jax.random.key(0))


def param_logical_axes(config: Qwen3VLConfig) -> Params:
    """A pytree like the params whose leaves are `PartitionSpec`s of logical axis names."""
    return nn.get_partition_spec(abstract_boxed_params(config))


def lm_head_kernel(params: Params, config: Qwen3VLConfig) -> jax.Array:
    """The output projection as [hidden, vocab] (the embedding, transposed, when tied)."""
    if config.text.tie_word_embeddings:
        return params["text"]["embed_tokens"]["embedding"].T
    return params["text"]["lm_head"]["kernel"]


def count_params(params: Params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
