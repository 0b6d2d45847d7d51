"""Host-side (NumPy) geometry of the vision tower: rotary positions and attention segments.

HF's processor writes `pixel_values` as [N, C*T*P*P] with the patches of each image in
"merge-block" order: (t, block_row, block_col, row_in_block, col_in_block), so every
`merge**2` consecutive patches form one LLM visual token. HF's vision tower permutes those
blocks into windows and runs attention per window (`cu_window_seqlens`). Attention is
permutation-equivariant, so we keep HF's order and express the same computation as segment ids:
two patches attend to each other iff they share a window (window blocks) or an image frame
(full-attention blocks). Padding patches (to a static bucket size) get segment id -1 in both.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sif_jax.model.config import VisionConfig


@dataclasses.dataclass(frozen=True)
class VisionGeometry:
    """Per-patch host arrays the vision tower consumes.

    patch_positions: int32 [N, 2] (row, col) of each patch in its image's patch grid.
    window_segments: int32 [N] window id of each patch (-1 = padding).
    frame_segments: int32 [N] image-frame id of each patch (-1 = padding).
    num_patches: the number of real (non-padding) patches.
    """

    patch_positions: np.ndarray
    window_segments: np.ndarray
    frame_segments: np.ndarray
    num_patches: int

    def as_dict(self) -> dict[str, np.ndarray]:
        return {
            "patch_positions": self.patch_positions,
            "window_segments": self.window_segments,
            "frame_segments": self.frame_segments,
        }


def check_grids(image_grid_thw: np.ndarray, config: VisionConfig) -> np.ndarray:
    grids = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
    merge = config.spatial_merge_size
    for i, (t, h, w) in enumerate(grids):
        if t < 1 or h < merge or w < merge or h % merge or w % merge:
            raise ValueError(
                f"image_grid_thw[{i}]={[int(t), int(h), int(w)]}: h and w must be positive "
                f"multiples of spatial_merge_size={merge}"
            )
    return grids


def vision_geometry(
    image_grid_thw: np.ndarray, config: VisionConfig, pad_to: int | None = None
) -> VisionGeometry:
    """Rotary positions and window/frame segment ids for the patches of `image_grid_thw`.

    Args:
      image_grid_thw: int [num_images, 3] patch grids (t, h, w), as HF's processor returns.
      config: the vision config (merge size, window size).
      pad_to: pad the arrays to this many patches (a static bucket); None = no padding.
    """
    grids = check_grids(image_grid_thw, config)
    merge = config.spatial_merge_size
    win = config.window_cells
    positions, windows, frames = [], [], []
    window_offset = 0
    frame_offset = 0
    for t, h, w in grids:
        gh, gw = h // merge, w // merge
        # Patch (row, col) in merge-block order: (block_row, block_col, in_row, in_col).
        rows = np.arange(h).reshape(gh, merge, 1, 1)
        cols = np.arange(w).reshape(1, 1, gw, merge)
        rr = np.broadcast_to(rows.transpose(0, 2, 1, 3), (gh, gw, merge, merge))
        cc = np.broadcast_to(cols.transpose(0, 2, 1, 3), (gh, gw, merge, merge))
        pos = np.stack([rr.ravel(), cc.ravel()], axis=-1)
        positions.append(np.tile(pos, (t, 1)))
        # Window of each merged token (block_row // win, block_col // win), per frame.
        n_win_w = -(-gw // win)
        n_win_h = -(-gh // win)
        block_window = (np.arange(gh)[:, None] // win) * n_win_w + (np.arange(gw)[None, :] // win)
        per_frame = np.repeat(block_window.ravel(), merge * merge)
        for f in range(t):
            windows.append(per_frame + window_offset + f * n_win_h * n_win_w)
            frames.append(np.full(h * w, frame_offset + f))
        window_offset += t * n_win_h * n_win_w
        frame_offset += t
    num = int(sum(int(t * h * w) for t, h, w in grids))
    patch_positions = np.concatenate(positions).astype(np.int32) if positions else np.zeros((0, 2), np.int32)
    window_segments = np.concatenate(windows).astype(np.int32) if windows else np.zeros((0,), np.int32)
    frame_segments = np.concatenate(frames).astype(np.int32) if frames else np.zeros((0,), np.int32)
    if pad_to is not None:
        if pad_to < num or pad_to % config.merge_unit:
            raise ValueError(
                f"pad_to={pad_to}: must be >= {num} patches and a multiple of {config.merge_unit}"
            )
        extra = pad_to - num
        patch_positions = np.concatenate([patch_positions, np.zeros((extra, 2), np.int32)])
        window_segments = np.concatenate([window_segments, np.full(extra, -1, np.int32)])
        frame_segments = np.concatenate([frame_segments, np.full(extra, -1, np.int32)])
    return VisionGeometry(patch_positions, window_segments, frame_segments, num)
