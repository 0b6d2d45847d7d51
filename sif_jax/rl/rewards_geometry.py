"""Box geometry for the SIFThinker rewards (host-side NumPy): exact IoU of box-set unions,
Hungarian-matched IoU, hierarchical IoU with progress, and depth consistency (METHODS §1).

Boxes are float [k, 4] normalised (x1, y1, x2, y2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from sif_jax.data.scenes import mean_depth_in_box

Box = tuple[float, float, float, float]
Area = list[tuple[Box, float]]  # one <area>: its (box, depth) pairs, as check_format returns
WHOLE_IMAGE: Box = (0.0, 0.0, 1.0, 1.0)


def as_boxes(boxes: object) -> np.ndarray:
    """float64 [k, 4] (k may be 0)."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _coverage(sets: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Coordinate compression over the boxes of all `sets`: for each set a bool [nx-1, ny-1]
    telling which elementary cells it covers, and float [nx-1, ny-1] cell areas. Exact: every
    box edge is a grid line, so each cell is either fully inside or fully outside a box."""
    allb = np.concatenate([s for s in sets], axis=0)
    xs = np.unique(np.concatenate([allb[:, 0], allb[:, 2]]))
    ys = np.unique(np.concatenate([allb[:, 1], allb[:, 3]]))
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    cell = np.diff(xs)[:, None] * np.diff(ys)[None, :]
    covers = []
    for s in sets:
        inx = (s[:, 0, None] < cx[None]) & (cx[None] < s[:, 2, None])  # [k, nx-1]
        iny = (s[:, 1, None] < cy[None]) & (cy[None] < s[:, 3, None])  # [k, ny-1]
        covers.append(np.any(inx[:, :, None] & iny[:, None, :], axis=0))
    return covers, cell


def union_area(boxes: object) -> float:
    """Exact area of the union of rectangles (coordinate compression)."""
    b = as_boxes(boxes)
    if len(b) == 0:
        return 0.0
    (cov,), cell = _coverage([b])
    return float(np.sum(cell[cov]))


def union_iou(pred: object, gt: object) -> float:
    """IoU of the union of the `pred` boxes with the union of the `gt` boxes (exact)."""
    p, g = as_boxes(pred), as_boxes(gt)
    if len(p) == 0 or len(g) == 0:
        return 0.0
    (cp, cg), cell = _coverage([p, g])
    union = float(np.sum(cell[cp | cg]))
    return float(np.sum(cell[cp & cg])) / union if union > 0 else 0.0


def iou_matrix(a: object, b: object) -> np.ndarray:
    """float64 [|a|, |b|] pairwise box IoU (0 where the union is empty)."""
    a, b = as_boxes(a), as_boxes(b)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def matched_iou(pred: object, gt: object) -> float:
    """Hungarian-matched IoU: the max-weight one-to-one matching's IoU sum / min(|P|, |G|)."""
    m = iou_matrix(pred, gt)
    if m.size == 0:
        return 0.0
    rows, cols = linear_sum_assignment(m, maximize=True)
    return float(m[rows, cols].sum()) / min(m.shape)


def hierarchical_iou(pred: object, gt: object) -> float:
    """IoU_h(P, G) = ½ [IoU(∪P, ∪G) + matched_iou(P, G)] ∈ [0, 1]."""
    return 0.5 * (union_iou(pred, gt) + matched_iou(pred, gt))


def is_whole_image(area: Area, tol: float = 1e-3) -> bool:
    """True when the area is a single box equal to [0, 0, 1, 1] (within `tol`)."""
    return len(area) == 1 and bool(np.all(np.abs(np.asarray(area[0][0]) - np.asarray(WHOLE_IMAGE)) <= tol))


def iou_progress(areas: Sequence[Area], gt: object, whole_image_tol: float = 1e-3) -> tuple[float, float]:
    """(R, IoU_h(P_T, G)) with R = IoU_h(P_T,G) + max(0, IoU_h(P_T,G) - IoU_h(P_s,G)) ∈ [0, 2].

    P_T = the last area's boxes; P_s = the first area that is not the whole image. Without such
    an area the progress term is 0. No areas or no GT boxes → (0, 0).
    """
    g = as_boxes(gt)
    if not areas or len(g) == 0:
        return 0.0, 0.0
    boxes = lambda area: [b for b, _ in area]
    final = hierarchical_iou(boxes(areas[-1]), g)
    start = next((a for a in areas if not is_whole_image(a, whole_image_tol)), None)
    progress = 0.0 if start is None else max(0.0, final - hierarchical_iou(boxes(start), g))
    return final + progress, final


def depth_consistency(
    areas: Sequence[Area], depth_map: np.ndarray | None, rel_tol: float = 0.1, depth_floor: float = 0.01
) -> float:
    """Fraction of predicted (box, depth) pairs, over ALL areas (the whole-image one included),
    whose depth d̂ is within |d̄ - d̂| <= rel_tol * max(d̄, depth_floor) of d̄ = mean of the depth
    map inside the box (`scenes.mean_depth_in_box`, the rule the SFT traces were written with).

    The floor keeps the relative test meaningful near the camera (d̄ → 0), where a pure relative
    tolerance would reject even the 3-decimal rounding the grammar imposes (±0.0005); with the
    default floor 0.01 the tolerance is never below 0.001. No depth map or no pairs → 0.
    """
    pairs = [p for a in areas for p in a]
    if depth_map is None or not pairs:
        return 0.0
    dm = np.asarray(depth_map, dtype=np.float64)
    if dm.ndim != 2 or dm.size == 0:
        return 0.0
    hits = 0
    for box, d_hat in pairs:
        d_bar = mean_depth_in_box(dm, box)
        hits += bool(np.isfinite(d_bar) and abs(d_bar - d_hat) <= rel_tol * max(d_bar, depth_floor))
    return hits / len(pairs)
