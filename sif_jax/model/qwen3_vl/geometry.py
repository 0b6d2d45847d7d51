"""Host-side (NumPy) geometry of the Qwen3-VL vision tower.

Per patch, in HF's merge-block order (block_row, block_col, row_in_block, col_in_block):
* `patch_positions` (row, col) for the 2-D rotary (transformers `vision_utils.get_vision_position_ids`);
* `frame_segments`: the image frame it belongs to; every vision block attends within a frame
  (HF's `cu_seqlens`, one segment per frame);
* `pos_indices` / `pos_weights` [N, 4]: the bilinear taps (align_corners=True) that resample the
  learned square position table to the image's patch grid, computed in float32 with the same
  arithmetic as transformers `vision_utils.get_vision_interpolation_indices_and_weights`.

Padding patches (to a static bucket) get segment id -1 and zero weights.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sif_jax.model.qwen3_vl.config import Qwen3VLVisionConfig


@dataclasses.dataclass(frozen=True)
class Qwen3VLVisionGeometry:
    """patch_positions int32 [N, 2]; frame_segments int32 [N]; pos_indices int32 [N, 4];
    pos_weights float32 [N, 4]; num_patches: the real (non-padding) patches."""

    patch_positions: np.ndarray
    frame_segments: np.ndarray
    pos_indices: np.ndarray
    pos_weights: np.ndarray
    num_patches: int

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"patch_positions": self.patch_positions, "frame_segments": self.frame_segments,
                "pos_indices": self.pos_indices, "pos_weights": self.pos_weights}


def check_grids(image_grid_thw: np.ndarray, config: Qwen3VLVisionConfig) -> np.ndarray:
    """int64 [I, 3]; raises ValueError naming the first grid whose h or w is not a positive
    multiple of the merge size."""
    grids = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
    merge = config.spatial_merge_size
    for i, (t, h, w) in enumerate(grids):
        if t < 1 or h < merge or w < merge or h % merge or w % merge:
            raise ValueError(
                f"image_grid_thw[{i}]={[int(t), int(h), int(w)]}: h and w must be positive multiples of "
                f"spatial_merge_size={merge}"
            )
    return grids


def _block_order(h: int, w: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of each patch of an h x w grid in merge-block order."""
    rows = np.broadcast_to(np.arange(h).reshape(h // merge, merge, 1, 1).transpose(0, 2, 1, 3),
                           (h // merge, w // merge, merge, merge))
    cols = np.broadcast_to(np.arange(w).reshape(1, 1, w // merge, merge).transpose(0, 2, 1, 3),
                           (h // merge, w // merge, merge, merge))
    return rows.ravel(), cols.ravel()


def _axis_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps [n, 2] and weights [n, 2] on one axis, align_corners=True, border clamp."""
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    offsets = np.arange(2)
    taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
    distance = np.abs(src[:, None] - floor[:, None] - offsets.astype(np.float32))
    weights = np.maximum(np.float32(1) - distance, np.float32(0)).astype(np.float32)
    return taps, weights


def vision_geometry(
    image_grid_thw: np.ndarray, config: Qwen3VLVisionConfig, pad_to: int | None = None
) -> Qwen3VLVisionGeometry:
    """Rotary positions, frame segments and position-table taps for the patches of `image_grid_thw`.

    Args:
      image_grid_thw: int [num_images, 3] patch grids (t, h, w), as HF's processor returns.
      config: the vision config (merge size, position-table side).
      pad_to: pad the arrays to this many patches (a static bucket); None = no padding.

    Raises:
      ValueError: a grid not a multiple of the merge size, or pad_to below the patch count / not a
        multiple of merge**2.
    """
    grids = check_grids(image_grid_thw, config)
    merge, side = config.spatial_merge_size, config.num_grid_per_side
    positions, frames, indices, weights = [], [], [], []
    frame = 0
    for t, h, w in grids:
        rows, cols = _block_order(int(h), int(w), merge)
        h_taps, h_w = _axis_taps(rows, int(h), side)
        w_taps, w_w = _axis_taps(cols, int(w), side)
        idx = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
        wts = (h_w[:, :, None] * w_w[:, None, :]).reshape(-1, 4)
        for _ in range(t):
            positions.append(np.stack([rows, cols], axis=-1))
            frames.append(np.full(h * w, frame))
            indices.append(idx)
            weights.append(wts)
            frame += 1
    num = int(sum(int(t * h * w) for t, h, w in grids))

    def cat(parts: list, shape: tuple, dtype) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

    patch_positions = cat(positions, (0, 2), np.int32)
    frame_segments = cat(frames, (0,), np.int32)
    pos_indices = cat(indices, (0, 4), np.int32)
    pos_weights = cat(weights, (0, 4), np.float32)
    if pad_to is not None:
        if pad_to < num or pad_to % config.merge_unit:
            raise ValueError(f"pad_to={pad_to}: must be >= {num} patches and a multiple of {config.merge_unit}")
        extra = pad_to - num
        patch_positions = np.concatenate([patch_positions, np.zeros((extra, 2), np.int32)])
        frame_segments = np.concatenate([frame_segments, np.full(extra, -1, np.int32)])
        pos_indices = np.concatenate([pos_indices, np.zeros((extra, 4), np.int32)])
        pos_weights = np.concatenate([pos_weights, np.zeros((extra, 4), np.float32)])
    return Qwen3VLVisionGeometry(patch_positions, frame_segments, pos_indices, pos_weights, num)
