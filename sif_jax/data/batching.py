"""Collation: preprocessed examples -> one bucketed, left-padded batch with all host geometry.

`collate` (prompts, for GRPO sampling / evaluation) and `collate_sft` (prompt + trace + eos, for
supervised training) share one layout:

* rows: each example repeated `repeat` times contiguously (GRPO groups: rows [g*G, (g+1)*G) are
  prompt g);
* `input_ids` / `attention_mask` int32 [R, L], **left**-padded with `pad_id` to the smallest
  length bucket >= the longest row (so the prompt ends at column L-1 in every row, where sampling
  starts);
A `sif_jax.batch.Batch`: `inputs` (`ModelInputs`) holds the model arrays, `targets`
(`RewardTargets`) the host lists.

* the model family's `collate_images` (`sif_jax.model.family`). LLaVA: `pixel_values` [R, 3, S, S],
  1-D `positions` [1, R, L]. Qwen2.5-VL, through `vlm.prepare_inputs(..., batch_images=True)`: M-RoPE
  `positions` [3, R, L] (no `rope_deltas`: the KV cache continues from the largest position),
  and the vision arrays in the batched-image layout: `pixel_values` [R, P, 1176] (one image per
  row, zero-padded to a per-image patch bucket P, padding segment id -1), `patch_positions`
  [R, P, 2], `window_segments` / `frame_segments` [R, P], `image_token_index` [R, L];
  `image_grid_thw` int64 [R, 3]. Qwen3-VL: the same layout with `pixel_values` [R, P, 1536] and
  `patch_positions`, `frame_segments`, `pos_indices` / `pos_weights` [R, P, 4] (no window segments).
  Vision attention then costs R * P^2, not (R * P)^2;
* `region_mask` bool [R, L]: the image-pad tokens whose cells overlap a target box with positive
  area (the family's `region_cells`; cell = `family.cell_size(config)`), at their padded-sequence
  positions; `region_tokens` / `visual_tokens` int32 [R]: how many tokens are in the region / image;
* `targets`, host lists, one item per row: `answers`, `choices` (list or None), `target_boxes` (float32
  [k, 4] normalised), `depth_maps` (float16 [S, S] or None), `prompt_ids`, `metadata` (dicts with
  id / family / relation / split / index); `group_size` = repeat.

Note: each repeated row carries its own copy of the image's patches, so the vision tower runs G
times on the same image in a GRPO batch (sharing the features is a possible optimisation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sif_jax.batch import Batch, ModelInputs, RewardTargets
from sif_jax.data.regions import batch_region_mask
from sif_jax.model.config import ModelConfig
from sif_jax.model.family import family_of

DEFAULT_LENGTH_BUCKETS: tuple[int, ...] = (64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)

Example = Mapping[str, Any]


def pick_bucket(n: int, buckets: Sequence[int] | None, what: str) -> int:
    """The smallest bucket >= n; None = the next power of two >= n (at least 4)."""
    if buckets is None:
        return max(4, 1 << max(0, int(n) - 1).bit_length())
    fits = [b for b in sorted(buckets) if b >= n]
    if not fits:
        raise ValueError(f"{what}: {n} does not fit the largest bucket {max(buckets)} (buckets {tuple(buckets)})")
    return fits[0]


def _name(ex: Example) -> str:
    meta = ex.get("metadata") if isinstance(ex.get("metadata"), Mapping) else {}
    return f"prompt_id {ex.get('prompt_id')!r}, id {meta.get('id')!r}, index {meta.get('index')!r}"


def _rows(examples: Sequence[Example], repeat: int) -> list[tuple[int, Example]]:
    if repeat < 1:
        raise ValueError(f"collate: repeat={repeat} must be >= 1")
    if not examples:
        raise ValueError("collate: no examples")
    return [(i, ex) for i, ex in enumerate(examples) for _ in range(repeat)]


def _assemble(
    examples: Sequence[Example],
    sequences: Sequence[np.ndarray],
    config: ModelConfig,
    *,
    repeat: int,
    length_buckets: Sequence[int],
    patch_buckets: Sequence[int] | None,
    pad_id: int,
    what: str,
) -> Batch:
    longest = max(length_buckets)
    for i, (ex, seq) in enumerate(zip(examples, sequences, strict=True)):
        if len(seq) > longest:
            raise ValueError(
                f"collate: example {i} ({_name(ex)}): {what} of {len(seq)} tokens "
                f"(prompt {len(ex['prompt_tokens'])}) exceeds the largest length bucket {longest}; add a larger "
                "one to config.data.length_buckets"
            )
    rows = _rows(examples, repeat)
    n_rows = len(rows)
    length = pick_bucket(max(len(s) for s in sequences), length_buckets, "sequence length")
    input_ids = np.full((n_rows, length), pad_id, np.int32)
    attention_mask = np.zeros((n_rows, length), np.int32)
    for r, (i, _) in enumerate(rows):
        seq = sequences[i]
        input_ids[r, length - len(seq):] = seq
        attention_mask[r, length - len(seq):] = 1
    for i, ex in enumerate(examples):
        n = _image_patches(ex)
        if patch_buckets is not None and n > max(patch_buckets):
            raise ValueError(
                f"collate: example {i} ({_name(ex)}): its image has {n} patches, more than the largest patch "
                f"bucket {max(patch_buckets)} (buckets {tuple(patch_buckets)}); lower max_pixels or add a bucket"
            )
    per_image = max(_image_patches(ex) for _, ex in rows)
    pad_to = pick_bucket(per_image, patch_buckets, "patches of one image")
    inputs = ModelInputs.from_arrays(family_of(config).collate_images(
        config, input_ids, attention_mask, [ex for _, ex in rows], pad_to))
    region = batch_region_mask(input_ids, config.image_token_id, [[ex["region_cells"]] for _, ex in rows],
                               attention_mask)
    targets = RewardTargets(
        answers=[ex["answer"] for _, ex in rows],
        choices=[None if ex.get("choices") is None else list(ex["choices"]) for _, ex in rows],
        target_boxes=[np.asarray(ex["target_boxes"], np.float32).reshape(-1, 4) for _, ex in rows],
        depth_maps=[ex.get("depth") for _, ex in rows],
        prompt_ids=[str(ex["prompt_id"]) for _, ex in rows],
        metadata=[dict(ex.get("metadata", {})) for _, ex in rows],
        group_size=repeat,
    )
    visual = ((input_ids == config.image_token_id) & (attention_mask > 0)).sum(axis=1).astype(np.int32)
    return Batch(inputs, region_mask=region, region_tokens=region.sum(axis=1).astype(np.int32), visual_tokens=visual,
                 targets=targets)


def _image_patches(ex: Example) -> int:
    """Rows of the example's vision input (`image_patches` from the preprocessor; else its Qwen grid)."""
    if "image_patches" in ex:
        return int(ex["image_patches"])
    return int(np.prod(np.asarray(ex["image_grid_thw"]).reshape(-1, 3), axis=-1).max())


def collate(
    examples: Sequence[Example],
    config: ModelConfig,
    *,
    repeat: int = 1,
    length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
    patch_buckets: Sequence[int] | None = None,
    pad_id: int | None = None,
) -> Batch:
    """Prompts only (the assistant header is the last token of every row). See the module doc.

    Args:
      examples: `pipeline.Preprocessor` outputs.
      config: the model config (image token id, vision geometry, vocabulary).
      repeat: G, rows per example (contiguous).
      length_buckets: allowed padded lengths L; the smallest that fits is used.
      patch_buckets: allowed padded patch counts per image; None = next power of two.
      pad_id: the padding token (default `config.pad_token_id`).

    Raises:
      ValueError: a prompt longer than the largest bucket, or an image with more patches than the
        largest patch bucket (naming the example, its prompt id, record id and index).
    """
    sequences = [np.asarray(ex["prompt_tokens"], np.int32) for ex in examples]
    return _assemble(examples, sequences, config, repeat=repeat, length_buckets=length_buckets,
                     patch_buckets=patch_buckets, pad_id=config.pad_token_id if pad_id is None else pad_id,
                     what="prompt")


def collate_sft(
    examples: Sequence[Example],
    config: ModelConfig,
    *,
    repeat: int = 1,
    length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
    patch_buckets: Sequence[int] | None = None,
    pad_id: int | None = None,
    eos_id: int | None = None,
) -> Batch:
    """Supervised rows: prompt + target trace tokens + eos, left-padded like `collate`.

    Adds `loss_mask` bool [R, L]: True at the trace and eos tokens (the labels; the loss reads the
    logits of the position before each), False on padding and the prompt; `target_lengths`
    int32 [R] (trace + eos); and `answer_start` int32 [R], the column of the example's
    `answer_start` target token (`Preprocessor`: where the final `<answer>` begins; the eos column
    when the example has none), which `sft.loss_weights` reads.
    """
    eos = config.eos_token_id if eos_id is None else eos_id
    sequences = [np.concatenate([np.asarray(ex["prompt_tokens"], np.int32), np.asarray(ex["target_tokens"], np.int32),
                                 np.asarray([eos], np.int32)]) for ex in examples]
    batch = _assemble(examples, sequences, config, repeat=repeat, length_buckets=length_buckets,
                      patch_buckets=patch_buckets, pad_id=config.pad_token_id if pad_id is None else pad_id,
                      what="prompt + target")
    length = batch.inputs.input_ids.shape[1]
    target_lengths = np.asarray([len(ex["target_tokens"]) + 1 for ex in examples for _ in range(repeat)], np.int32)
    cols = np.arange(length)[None, :]
    answer = np.asarray([ex.get("answer_start", len(ex["target_tokens"])) for ex in examples for _ in range(repeat)],
                        np.int32)
    return batch.replace(loss_mask=cols >= (length - target_lengths)[:, None], target_lengths=target_lengths,
                         answer_start=(length - target_lengths + answer).astype(np.int32))
