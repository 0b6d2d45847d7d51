"""Hierarchical IoU (exact unions, Hungarian matching, progress) and depth consistency."""

import itertools

import numpy as np
import pytest

from sif_jax.rl.rewards import RewardConfig, RewardState, depth_reward, iou_reward
from sif_jax.rl.rewards_geometry import (
    depth_consistency,
    hierarchical_iou,
    iou_progress,
    matched_iou,
    union_area,
    union_iou,
)

from .helpers import make_batch, trace

A = [0.0, 0.0, 0.5, 0.5]
B = [0.25, 0.25, 0.75, 0.75]
C = [0.0, 0.0, 0.75, 0.75]


def _area(boxes, depth=0.5):
    return [(tuple(b), depth) for b in boxes]


def test_identical_and_disjoint():
    assert union_iou([A], [A]) == 1.0 and matched_iou([A], [A]) == 1.0 and hierarchical_iou([A], [A]) == 1.0
    far = [0.6, 0.6, 0.9, 0.9]
    assert union_iou([A], [far]) == 0.0 and matched_iou([A], [far]) == 0.0 and hierarchical_iou([A], [far]) == 0.0


def test_two_box_union_by_hand():
    # |A ∪ B| = 0.25 + 0.25 - 0.0625 = 0.4375, inside C (0.5625).
    assert union_area([A, B]) == pytest.approx(0.4375)
    assert union_iou([A, B], [C]) == pytest.approx(0.4375 / 0.5625)
    # Each of A, B has IoU 0.25 / 0.5625 with C; one match, divided by min(2, 1) = 1.
    assert matched_iou([A, B], [C]) == pytest.approx(0.25 / 0.5625)
    assert hierarchical_iou([A, B], [C]) == pytest.approx(0.5 * (0.4375 + 0.25) / 0.5625)


def test_union_area_is_exact_inclusion_exclusion():
    rng = np.random.default_rng(0)
    for _ in range(20):
        lo = rng.uniform(0, 0.6, (3, 2))
        boxes = np.concatenate([lo, lo + rng.uniform(0.05, 0.4, (3, 2))], axis=1)[:, [0, 1, 2, 3]]

        def inter(*bs):
            x1, y1 = max(b[0] for b in bs), max(b[1] for b in bs)
            x2, y2 = min(b[2] for b in bs), min(b[3] for b in bs)
            return max(0.0, x2 - x1) * max(0.0, y2 - y1)

        expected = sum(inter(b) for b in boxes) - sum(inter(a, b) for a, b in itertools.combinations(boxes, 2))
        expected += inter(*boxes)
        assert union_area(boxes) == pytest.approx(expected, abs=1e-12)


def test_hungarian_is_order_free_and_uses_min_count():
    d = [0.5, 0.5, 1.0, 1.0]
    assert matched_iou([A, d], [d, A]) == pytest.approx(1.0)
    # One prediction, two GT boxes: the best match / min(1, 2).
    assert matched_iou([A], [A, d]) == pytest.approx(1.0)
    assert union_iou([A], [A, d]) == pytest.approx(0.5)


def test_progress_logic():
    gt = [B]
    whole = _area([[0, 0, 1, 1]])
    distractor = _area([[0.8, 0.8, 1.0, 1.0]])
    exact = _area([B])
    # Distractor first (IoU_h 0), then exact: R = 1 + (1 - 0) = 2.
    assert iou_progress([whole, distractor, exact], gt) == (pytest.approx(2.0), pytest.approx(1.0))
    # P_s is the final area itself: no progress.
    assert iou_progress([whole, exact], gt)[0] == pytest.approx(1.0)
    # Getting worse never gives negative progress.
    assert iou_progress([whole, exact, distractor], gt)[0] == 0.0
    # Only the whole image: no P_s, progress 0, R = IoU_h(whole, G).
    expected = hierarchical_iou([[0, 0, 1, 1]], gt)
    assert iou_progress([whole], gt)[0] == pytest.approx(expected)
    assert iou_progress([], gt) == (0.0, 0.0) and iou_progress([exact], np.zeros((0, 4))) == (0.0, 0.0)


def test_iou_reward_on_texts():
    texts = [
        trace([([[0, 0, 1, 1]], [0.5]), ([[0.8, 0.8, 1, 1]], [0.5]), ([B], [0.5])]),
        trace([([[0, 0, 1, 1]], [0.5]), ([B], [0.5])]),
        "<think>garbage",
    ]
    res = iou_reward(make_batch(texts, boxes=[np.array([B])] * 3), RewardState(), RewardConfig())
    np.testing.assert_allclose(res.rewards, [2.0, 1.0, 0.0], atol=1e-6)


def _depth_map():
    d = np.full((20, 20), 0.8, np.float32)
    d[4:12, 2:8] = 0.3  # box [0.1, 0.2, 0.4, 0.6] in a 20x20 map
    d[14:18, 14:18] = 0.0  # a region touching the camera
    return d


def test_depth_consistency_synthetic_map():
    d = _depth_map()
    box = (0.1, 0.2, 0.4, 0.6)
    whole_mean = float(d.mean())
    areas = [[((0.0, 0.0, 1.0, 1.0), round(whole_mean, 3))], [(box, 0.3), (box, 0.32), (box, 0.35)]]
    # whole ok, 0.3 ok, 0.32 within 10% (0.067), 0.35 not (0.167): 3 / 4 over all areas.
    assert depth_consistency(areas, d) == pytest.approx(0.75)
    near = (0.7, 0.7, 0.9, 0.9)
    assert depth_consistency([[(near, 0.001)]], d) == 1.0  # tol = 0.1 * max(0, 0.01) = 0.001
    assert depth_consistency([[(near, 0.002)]], d) == 0.0
    assert depth_consistency(areas, None) == 0.0 and depth_consistency([], d) == 0.0


def test_depth_reward_on_texts():
    d = _depth_map()
    good = trace([([[0.1, 0.2, 0.4, 0.6]], [0.3])])
    bad = trace([([[0.1, 0.2, 0.4, 0.6]], [0.9])])
    batch = make_batch([good, bad, good, "nope"], depth_maps=[d, d, None, d])
    res = depth_reward(batch, RewardState(), RewardConfig())
    np.testing.assert_allclose(res.rewards, [1.0, 0.0, 0.0, 0.0])
