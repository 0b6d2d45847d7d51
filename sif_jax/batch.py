"""The typed batch that flows from collation (`data.batching`) into the model, sampler, scoring
and the training steps.

`ModelInputs` holds the arrays a model family's module takes; `Batch` adds the region mask, the
SFT labels and the per-row token counts; `RewardTargets` holds the host-only lists the rewards
read. Each array field declares its batch axis on the field (`batch_axis` metadata: the axis that
indexes rows; None = replicated), so `parallel.shard_batch` places a batch with no side table.
This module imports no model code: data and model both depend on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import flax.struct
import numpy as np

Array = Any  # np.ndarray on the host, jax.Array on device, jax.ShapeDtypeStruct when planning


def batch_field(axis: int | None = 0, default: Any = None) -> Any:
    """A pytree field whose batch (row) axis is `axis` (None: not per row, replicated)."""
    return flax.struct.field(default=default, metadata={"batch_axis": axis})


@flax.struct.dataclass
class ModelInputs:
    """The model arrays of R rows of L tokens (fields a family does not use are None).

    input_ids int32 [R, L]; attention_mask int32 [R, L] (1 = real token); positions int32
    [position_axes, R, L] (3 for M-RoPE, 1 for 1-D RoPE); image_mask bool [R, L] and
    image_token_index int32 [R, L]: the image positions and, per position, its feature's row in
    the row's image; the vision arrays in the batched-image layout (one image per row, padded to P
    patches): pixel_values [R, P, D] (LLaVA [R, 3, S, S]), patch_positions int32 [R, P, 2],
    window_segments / frame_segments int32 [R, P], pos_indices int32 / pos_weights float32
    [R, P, 4] (Qwen3-VL); image_grid_thw int64 [R, 3] (host, replicated); num_patches int32 []
    (host, replicated); rope_deltas [R, 1] (Qwen2.5-VL's M-RoPE offsets, which no module reads).
    """

    input_ids: Array = batch_field(0)
    attention_mask: Array = batch_field(0)
    positions: Array = batch_field(1)
    image_mask: Array = batch_field(0)
    image_token_index: Array = batch_field(0)
    pixel_values: Array = batch_field(0)
    patch_positions: Array = batch_field(0)
    window_segments: Array = batch_field(0)
    frame_segments: Array = batch_field(0)
    pos_indices: Array = batch_field(0)
    pos_weights: Array = batch_field(0)
    image_grid_thw: Array = batch_field(None)
    num_patches: Array = batch_field(None)
    rope_deltas: Array = batch_field(0)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> ModelInputs:
        """From a family's `prepare_inputs` / `collate_images` output. Raises ValueError naming an
        array that is no field."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(arrays) - names)
        if unknown:
            raise ValueError(f"ModelInputs: unknown arrays {unknown}; the fields are {sorted(names)}")
        return cls(**arrays)

    def arrays(self) -> dict[str, Any]:
        """The fields that are set, by name (the keyword arguments of a family's module)."""
        return {k: v for k, v in self.items()}

    def items(self) -> Iterator[tuple[str, Any]]:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                yield f.name, value

    @property
    def rows(self) -> int:
        return int(np.shape(self.input_ids)[0])


@dataclasses.dataclass(frozen=True)
class RewardTargets:
    """Host-only lists, one item per row, that the rewards and the evaluation read.

    answers: ground-truth answer strings; choices: the multiple-choice options or None;
    target_boxes: float32 [k, 4] normalised (x1, y1, x2, y2) boxes; depth_maps: float16 [S, S]
    normalised depth or None; prompt_ids: stable id of each row's prompt; metadata: dicts with
    id / family / relation / split / index; group_size: G, rows per prompt (contiguous).
    """

    answers: list[str]
    choices: list[list[str] | None]
    target_boxes: list[np.ndarray]
    depth_maps: list[np.ndarray | None]
    prompt_ids: list[str]
    metadata: list[dict[str, Any]]
    group_size: int = 1

    def __post_init__(self) -> None:
        n = len(self.answers)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list) and len(value) != n:
                raise ValueError(f"RewardTargets.{f.name} has {len(value)} items; answers has {n}")


@flax.struct.dataclass
class Batch:
    """A collated batch (`data.batching.collate` / `collate_sft`).

    inputs: the model arrays. region_mask bool [R, L]: the image positions whose cells overlap a
    target box; region_tokens / visual_tokens int32 [R]: tokens in the region / the image;
    loss_mask bool [R, L] (SFT: the trace and eos labels; else None); target_lengths int32 [R]
    (SFT: trace + eos; else None); answer_start int32 [R] (SFT: the column where the trace's
    final `<answer>` begins, the eos column when it has none; else None). targets: the host
    lists (not a pytree leaf, never placed).
    num_real: rows that count (evaluation pads its last batch by repeating a row); None = all.
    """

    inputs: ModelInputs
    region_mask: Array = batch_field(0)
    region_tokens: Array = batch_field(0)
    visual_tokens: Array = batch_field(0)
    loss_mask: Array = batch_field(0)
    target_lengths: Array = batch_field(0)
    answer_start: Array = batch_field(0)
    targets: RewardTargets | None = flax.struct.field(pytree_node=False, default=None)
    num_real: int | None = flax.struct.field(pytree_node=False, default=None)

    @property
    def rows(self) -> int:
        return self.inputs.rows


def batch_axis(cls: type, name: str) -> int | None:
    """The batch axis declared on field `name` of `cls` (KeyError naming an unknown field)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("batch_axis")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def as_arrays(inputs: ModelInputs | Mapping[str, Any]) -> Mapping[str, Any]:
    """The named arrays of `inputs` (a `ModelInputs`, or a mapping as `prepare_inputs` returns)."""
    return inputs.arrays() if isinstance(inputs, ModelInputs) else inputs
