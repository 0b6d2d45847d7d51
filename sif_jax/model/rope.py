"""Host-side (NumPy) position ids for the decoder's M-RoPE, as HF's `get_rope_index`.

Text tokens advance all three axes (temporal, height, width) together; the tokens of one image
take (t0, t0 + row, t0 + col) over its merged grid, and the text after it resumes at
t0 + max(rows, cols). Padding (attention_mask == 0) is skipped and gets position 0.
"""

from __future__ import annotations

import numpy as np

from sif_jax.model.config import ModelConfig


def image_token_runs(ids: np.ndarray, image_token_id: int) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of image-pad tokens in a 1-D id array."""
    is_image = np.concatenate([[False], ids == image_token_id, [False]])
    edges = np.flatnonzero(np.diff(is_image.astype(np.int8)))
    return [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2], strict=True)]


def get_rope_index(
    input_ids: np.ndarray,
    image_grid_thw: np.ndarray | None,
    attention_mask: np.ndarray | None,
    config: ModelConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """M-RoPE positions for a batch of prompts.

    Args:
      input_ids: int [B, L].
      image_grid_thw: int [num_images, 3] patch grids (t, h, w) in the order the images appear
        in the batch (row by row); None for text only.
      attention_mask: {0,1} [B, L] or None (all valid).
      config: the model config (merge size, image-pad token id).

    Returns:
      positions: int32 [3, B, L]; rope_deltas: int32 [B], the offset that continues the
      positions during decoding (next position = number of valid tokens + delta).
    """
    input_ids = np.asarray(input_ids)
    batch, length = input_ids.shape
    mask = np.ones_like(input_ids, bool) if attention_mask is None else np.asarray(attention_mask) > 0
    merge = config.vision.spatial_merge_size
    grids = [] if image_grid_thw is None else [tuple(int(x) for x in g) for g in np.asarray(image_grid_thw)]
    positions = np.zeros((3, batch, length), np.int32)
    deltas = np.zeros((batch,), np.int32)
    next_image = 0
    for row in range(batch):
        ids = input_ids[row][mask[row]]
        pieces = []
        current = 0
        cursor = 0
        for start, end in image_token_runs(ids, config.image_token_id):
            if start > cursor:
                n = start - cursor
                pieces.append(np.broadcast_to(np.arange(n) + current, (3, n)))
                current += n
            if next_image >= len(grids):
                raise ValueError(
                    f"input_ids row {row} has more image-pad runs than image_grid_thw has images "
                    f"({len(grids)})"
                )
            t, h, w = grids[next_image]
            gh, gw = h // merge, w // merge
            if end - start != t * gh * gw:
                raise ValueError(
                    f"input_ids row {row}: image {next_image} has {end - start} image-pad tokens "
                    f"but image_grid_thw={[t, h, w]} needs t*h*w/merge^2 = {t * gh * gw}"
                )
            tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
            pieces.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + current)
            current += max(gh, gw)
            cursor = end
            next_image += 1
        if cursor < len(ids):
            n = len(ids) - cursor
            pieces.append(np.broadcast_to(np.arange(n) + current, (3, n)))
        row_pos = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.int64)
        positions[:, row, mask[row]] = row_pos
        deltas[row] = (row_pos.max() + 1 if row_pos.size else 0) - len(ids)
    if next_image != len(grids):
        raise ValueError(
            f"image_grid_thw has {len(grids)} images but input_ids hold {next_image} image-pad runs"
        )
    return positions, deltas
