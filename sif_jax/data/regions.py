"""Box -> visual-token mask for a merged patch grid, and its place in a padded token row (METHODS §0).

One LLM visual token is one `s x s` pixel cell of the resized image, s = `config.vision.cell_size`
(patch * merge = 28 for Qwen2.5-VL; never hard-code it). For a box in resized-image pixels
(or normalised, then scaled by the grid's pixel size W = C*s, H = R*s):

    c0 = floor(x1 / s)     c1 = ceil(x2 / s) - 1
    r0 = floor(y1 / s)     r1 = ceil(y2 / s) - 1
    tokens {r * C + c : r0 <= r <= r1, c0 <= c <= c1}     (raster order, relative to the image's
                                                           first image-pad token)

so a cell is in the mask iff it overlaps the box with positive area. In particular a box that
*touches* a cell border does not pull in the next cell: x2 = 56 with s = 28 covers columns 0-1,
not 2 (SIFThinker/SAYO's `floor(x2 / s)` would add column 2). A zero-area box selects nothing.
Coordinates are snapped to the cell grid within `EPS` cells first, so a normalised border such as
0.25 * 224 = 56.00000000001 does not leak into the next cell either.

Videos / multi-frame grids (t > 1): the same cells are selected in every frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EPS = 1e-6  # in cells


def box_to_cell_range(
    box: Sequence[float], grid_hw: tuple[int, int], cell_size: int, normalized: bool = True
) -> tuple[int, int, int, int] | None:
    """(r0, r1, c0, c1), inclusive and clipped to the grid, or None for an empty selection.

    box: [x1, y1, x2, y2], normalised to [0, 1] (normalized=True) or in resized-image pixels.
    grid_hw: (R, C) merged-token rows and columns.
    """
    rows, cols = grid_hw
    x1, y1, x2, y2 = (float(v) for v in box)
    if normalized:
        x1, x2 = x1 * cols * cell_size, x2 * cols * cell_size
        y1, y2 = y1 * rows * cell_size, y2 * rows * cell_size
    if not (x2 > x1 and y2 > y1):
        return None  # no area: overlaps nothing with positive area
    c0 = max(math.floor(x1 / cell_size + EPS), 0)
    r0 = max(math.floor(y1 / cell_size + EPS), 0)
    c1 = min(math.ceil(x2 / cell_size - EPS) - 1, cols - 1)
    r1 = min(math.ceil(y2 / cell_size - EPS) - 1, rows - 1)
    if c1 < c0 or r1 < r0:
        return None
    return r0, r1, c0, c1


def region_cell_mask(
    boxes: Sequence[Sequence[float]],
    grid_hw: tuple[int, int],
    cell_size: int,
    normalized: bool = True,
) -> np.ndarray:
    """bool [R * C]: the cells any of `boxes` overlaps with positive area, raster order."""
    rows, cols = grid_hw
    mask = np.zeros((rows, cols), bool)
    for box in boxes:
        rng = box_to_cell_range(box, grid_hw, cell_size, normalized)
        if rng is not None:
            r0, r1, c0, c1 = rng
            mask[r0:r1 + 1, c0:c1 + 1] = True
    return mask.reshape(-1)


def merged_grid(image_grid_thw: Sequence[int], spatial_merge_size: int) -> tuple[int, int, int]:
    """(t, R, C) merged-token grid of one image from its patch grid (t, h, w)."""
    t, h, w = (int(v) for v in image_grid_thw)
    if h % spatial_merge_size or w % spatial_merge_size:
        raise ValueError(
            f"image_grid_thw={[t, h, w]}: h and w must be multiples of "
            f"spatial_merge_size={spatial_merge_size}"
        )
    return t, h // spatial_merge_size, w // spatial_merge_size


def image_region_mask(
    boxes: Sequence[Sequence[float]],
    image_grid_thw: Sequence[int],
    cell_size: int,
    spatial_merge_size: int,
    normalized: bool = True,
) -> np.ndarray:
    """bool [t * R * C]: the region over all of one image's visual tokens, in token order."""
    t, rows, cols = merged_grid(image_grid_thw, spatial_merge_size)
    return np.tile(region_cell_mask(boxes, (rows, cols), cell_size, normalized), t)


def place_in_sequence(
    input_ids: np.ndarray,
    image_token_id: int,
    image_masks: Sequence[np.ndarray],
    attention_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Scatters per-image token masks onto the image-pad positions of one (padded) token row.

    input_ids: int [L], left- or right-padded. image_masks: one bool [n_i] per image in the row,
    in order; their lengths must add up to the row's number of image-pad tokens (those with
    attention_mask == 1 when it is given). Returns bool [L], True at the region's image pads —
    padded-sequence coordinates, so left padding shifts it correctly.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 1:
        raise ValueError(f"input_ids: expected one row [L], got shape {ids.shape}")
    is_image = ids == image_token_id
    if attention_mask is not None:
        is_image &= np.asarray(attention_mask) > 0
    positions = np.flatnonzero(is_image)
    flat = (np.concatenate([np.asarray(m, bool).reshape(-1) for m in image_masks])
            if len(image_masks) else np.zeros((0,), bool))
    if flat.size != positions.size:
        raise ValueError(
            f"input_ids has {positions.size} image-pad tokens (id {image_token_id}) but the "
            f"image masks cover {flat.size} tokens"
        )
    out = np.zeros(ids.shape, bool)
    out[positions] = flat
    return out


def batch_region_mask(
    input_ids: np.ndarray,
    image_token_id: int,
    image_masks: Sequence[Sequence[np.ndarray]],
    attention_mask: np.ndarray | None = None,
) -> np.ndarray:
    """bool [B, L]: `place_in_sequence` for each row; image_masks[b] lists row b's images."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or len(image_masks) != ids.shape[0]:
        raise ValueError(
            f"input_ids shape {ids.shape} needs [B, L] with B = len(image_masks) = "
            f"{len(image_masks)}"
        )
    return np.stack([
        place_in_sequence(ids[b], image_token_id, image_masks[b],
                          None if attention_mask is None else attention_mask[b])
        for b in range(ids.shape[0])
    ])


def focus_region_mask(
    focus: np.ndarray, image_grid_thw: Sequence[int], cell_size: int, spatial_merge_size: int
) -> np.ndarray:
    """bool [t * R * C]: a focus mask given on a coarser token grid (SAYO's `focus_area`, bool
    [r, c] on 28 px tokens of the stored image) on this model's merged-token grid (R, C).

    Exact re-mapping when one grid refines the other along each axis: on a finer model grid each
    focus cell covers an (R / r) x (C / c) block of model tokens (the same grid, or the image
    enlarged by an integer factor); on a coarser one (r and c whole multiples of R and C, e.g.
    SAYO's 16 x 16 on a shrunk image's 4 x 4) a model token is in the region when any focus cell
    it covers is, the rule boxes follow (`region_mask`: a token whose cell overlaps a box). An
    axis may refine and the other coarsen. Raises ValueError naming both grids and `cell_size`
    when an axis does neither.
    """
    focus = np.asarray(focus, bool)
    if focus.ndim != 2 or 0 in focus.shape:
        raise ValueError(f"focus mask: expected bool [rows, cols], got shape {focus.shape}")
    t, rows, cols = merged_grid(image_grid_thw, spatial_merge_size)
    fr, fc = focus.shape
    if (rows % fr and fr % rows) or (cols % fc and fc % cols):
        raise ValueError(
            f"the focus area is given on a {fr} x {fc} token grid, but the model sees this image as {rows} x {cols} "
            f"tokens of {cell_size} px, and neither grid refines the other on each axis; keep the image at a size "
            f"where {rows} x {cols} is a multiple or a divisor of {fr} x {fc} (data.max_pixels / min_pixels) or "
            f"use a model with {cell_size} px tokens on an image of {fr * cell_size} x {fc * cell_size} px"
        )
    up_r, up_c = max(rows // fr, 1), max(cols // fc, 1)  # refine each focus cell into model tokens
    fine = np.kron(focus, np.ones((up_r, up_c), bool)).astype(bool)
    down_r, down_c = fine.shape[0] // rows, fine.shape[1] // cols  # then pool blocks: any focus cell
    mask = fine.reshape(rows, down_r, cols, down_c).any(axis=(1, 3))
    return np.tile(mask.reshape(-1), t)
