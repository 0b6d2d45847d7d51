"""GRPO groups: the G rows of a prompt are copies, so their prompt work is done once.

A GRPO batch holds each prompt G times contiguously (rows [g * G, (g + 1) * G) are prompt g, see
`data.batching.collate(repeat=G)`). `unique_prompts` takes one row per group (the vision tower and
the prompt pass then run on P = N / G rows); `repeat_rows` / `repeat_cache` broadcast a per-prompt
result back to the N rows (`jnp.repeat`, which materialises the G copies; under `jax.grad` its
transpose sums the G rows' gradients into the prompt's).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sif_jax.model.cache import KVCache
from sif_jax.model.family import family_of

ROW_KEYS = ("input_ids", "attention_mask", "image_token_index", "image_mask")
IMAGE_KEYS = ("pixel_values", "patch_positions", "window_segments", "frame_segments", "pos_indices", "pos_weights")


def check_groups(input_ids: Any, group_size: int) -> None:
    """Raises ValueError unless the rows of `input_ids` [N, L] form groups of `group_size` equal rows.

    Only host (NumPy) arrays are checked; device arrays pass unchecked.
    """
    n = np.shape(input_ids)[0]
    if group_size < 1 or n % group_size:
        raise ValueError(f"group_size={group_size} does not divide the batch of {n} rows")
    if isinstance(input_ids, np.ndarray) and group_size > 1:
        groups = input_ids.reshape(n // group_size, group_size, -1)
        bad = np.flatnonzero(~(groups == groups[:, :1]).all(axis=(1, 2)))
        if bad.size:
            raise ValueError(f"group_size={group_size}: rows of group {int(bad[0])} (rows "
                             f"{int(bad[0]) * group_size}..{int(bad[0] + 1) * group_size - 1}) hold different prompts")


SHARED_FAMILIES = ("qwen2_5_vl", "llava", "qwen3_vl")


def shares_prompts(config: Any) -> bool:
    """Whether `config`'s family runs a group's prompt once (`unique_prompts`, the shared-prefix
    scoring pass through the module's `extend`): Qwen2.5-VL, LLaVA-1.5 and Qwen3-VL do. Qwen3-VL's
    DeepStack adds visual features to the hidden states of the image positions inside its first
    layers; those positions are all in the prompt, so the prompt pass's keys/values carry them and
    a completion pass after the copied keys/values (text only, `Qwen3VL.extend`) equals the full
    forward's completion positions."""
    return family_of(config).name in SHARED_FAMILIES


def unique_prompts(prompt: dict[str, Any], group_size: int, config: Any) -> dict[str, jax.Array]:
    """The model inputs of one row per group: [N, L] rows -> [N / G, L].

    Args:
      prompt: a prompt batch of N rows, G copies per prompt, text-only or with the same number k of
        images per row, row r's images at [r * k, (r + 1) * k) of the leading (images) axis:
        Qwen2.5-VL's batched-image layout of `vlm.prepare_inputs(batch_images=True)` (pixel_values
        [images, patches, 1176] and `image_token_index` [N, L]), Qwen3-VL's of
        `qwen3_vl.model.prepare_inputs(batch_images=True)` (pixel_values [images, patches, 1536],
        `image_token_index` [N, L], per-image patch_positions, frame_segments, pos_indices,
        pos_weights), or LLaVA-1.5's pixel_values [images, 3, S, S] (with or without
        `image_token_index`).
      config: a config of a family in `SHARED_FAMILIES`.

    Returns:
      The family's `model_inputs` of rows 0, G, 2G, ...: their images only (so the vision tower
      runs once per prompt). `image_token_index`, when present, is renumbered to the kept images'
      features (F per image: patches / merge_unit for Qwen2.5-VL and Qwen3-VL, `image_seq_length`
      for LLaVA).
      Without it (LLaVA) the k-th image position of the batch takes feature row k, row-major;
      keeping whole rows and their images in order keeps that mapping.

    Raises:
      ValueError: G does not divide N, host rows of a group differ (`check_groups`), a layout with
        no per-row images to select (the Qwen families' flat patch list, pixel_values of another rank),
        a family outside `SHARED_FAMILIES`, images not a multiple of the rows, or (host arrays,
        LLaVA without `image_token_index`) a row whose image positions are not k * F.
    """
    family = family_of(config)
    inputs = family.model_inputs(prompt)
    n = np.shape(inputs["input_ids"])[0]
    check_groups(inputs["input_ids"], group_size)
    if group_size == 1:
        return inputs
    out = {k: v[::group_size] for k, v in inputs.items() if k in ROW_KEYS}
    out["positions"] = inputs["positions"][:, ::group_size]
    if "pixel_values" not in inputs:
        return out
    pixels = inputs["pixel_values"]
    features_per_image = _features_per_image(family.name, inputs, config)
    if np.shape(pixels)[0] % n:
        raise ValueError(f"unique_prompts: {np.shape(pixels)[0]} images do not split evenly over {n} rows")
    per_row = np.shape(pixels)[0] // n
    for k in IMAGE_KEYS:
        if k in inputs:
            v = inputs[k]
            v = v.reshape(n, per_row, *v.shape[1:])[::group_size]
            out[k] = v.reshape(-1, *v.shape[2:])
    if "image_token_index" not in inputs:
        _check_row_major_images(inputs, config, per_row * features_per_image)
        return out
    # Row g * G's images start at feature (g * G) * k * F; kept, they start at g * k * F.
    groups = np.arange(n // group_size)
    shift = jnp.asarray((groups * group_size - groups) * per_row * features_per_image, jnp.int32)
    index = out["image_token_index"]
    out["image_token_index"] = jnp.maximum(index - shift[:, None].astype(index.dtype), 0)
    return out


def _features_per_image(family: str, inputs: dict[str, Any], config: Any) -> int:
    """F, the feature rows of one image, for a layout `unique_prompts` can split (ValueError otherwise)."""
    shape = np.shape(inputs["pixel_values"])
    if family in ("qwen2_5_vl", "qwen3_vl"):
        if len(shape) != 3 or "image_token_index" not in inputs:
            raise ValueError("unique_prompts needs the batched-image layout (prepare_inputs(batch_images=True)); "
                             f"got pixel_values of shape {shape} without per-row images")
        return shape[1] // config.vision.merge_unit
    if family == "llava":
        if len(shape) != 4:
            raise ValueError(f"unique_prompts: LLaVA pixel_values must be [images, 3, S, S]; got shape {shape}")
        return config.image_seq_length
    raise ValueError(f"unique_prompts: family {family!r} has no per-prompt layout (families {SHARED_FAMILIES})")


def _check_row_major_images(inputs: dict[str, Any], config: Any, per_row: int) -> None:
    """ValueError unless every row holds `per_row` image positions (host arrays only): without
    `image_token_index` the k-th image position of the batch takes feature k, so only then do a
    row's positions take its own images' features."""
    ids = inputs["input_ids"]
    mask = inputs.get("image_mask")
    if not isinstance(ids, np.ndarray) or (mask is not None and not isinstance(mask, np.ndarray)):
        return
    counts = (ids == config.image_token_id if mask is None else mask.astype(bool)).sum(axis=1)
    bad = np.flatnonzero(counts != per_row)
    if bad.size:
        raise ValueError(f"unique_prompts: row {int(bad[0])} holds {int(counts[bad[0]])} image positions; every row "
                         f"must hold {per_row} (its images' features) to keep its own images")


def repeat_rows(x: jax.Array, group_size: int, axis: int = 0) -> jax.Array:
    """Each row of `x` along `axis` repeated `group_size` times contiguously ([P, ...] -> [P * G, ...])."""
    return x if group_size == 1 else jnp.repeat(x, group_size, axis=axis)


def repeat_cache(cache: KVCache, group_size: int) -> KVCache:
    """A prefilled cache of P prompts -> N = P * G rows (keys/values copied G times)."""
    if group_size == 1:
        return cache
    return cache.replace(
        keys=repeat_rows(cache.keys, group_size, 1), values=repeat_rows(cache.values, group_size, 1),
        valid=repeat_rows(cache.valid, group_size), visual=repeat_rows(cache.visual, group_size),
        next_position=repeat_rows(cache.next_position, group_size),
    )
