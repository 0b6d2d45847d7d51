"""Traces (reverse expansion, forward inference) and the output-grammar checker."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sif_jax.data.format import area_json, check_format, fmt_number
from sif_jax.data.questions import generate_questions
from sif_jax.data.traces import (
    TraceConfig,
    build_trace,
    build_trace_from_steps,
    iou,
    merge_overlapping,
    reverse_expand,
    round_box_outward,
)

VALID = (
    '<think><area>[{"bbox_2d":[0,0,1,1],"depth":0.5}]</area><text>Whole image.</text>'
    '<area>[{"bbox_2d":[0.1,0.2,0.3,0.4],"depth":0.25}, {"bbox_2d":[0.5,0.5,0.9,0.95],'
    '"depth":0.125}]</area><text>The two objects.</text></think><answer>yes</answer>'
)


def _contains(outer, inner, tol=1e-9):
    return (outer[0] <= inner[0] + tol and outer[1] <= inner[1] + tol
            and outer[2] >= inner[2] - tol and outer[3] >= inner[3] - tol)


def _box_mean(depth, box):
    h, w = depth.shape
    r0, r1 = int(np.floor(box[1] * h + 0.5)), int(np.ceil(box[3] * h - 0.5))
    c0, c1 = int(np.floor(box[0] * w + 0.5)), int(np.ceil(box[2] * w - 0.5))
    return float(depth[r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)].mean())


@pytest.fixture(scope="module")
def traced(scenes):
    out = []
    for sc in scenes:
        for q in generate_questions(sc, 0, per_family=2):
            out.append((sc, q, build_trace(sc, q, seed=0)))
    return out


# ---------------------------------------------------------------------------- traces


def test_traces_pass_the_checker(traced):
    for _, q, tr in traced:
        res = check_format(tr.text)
        assert res.ok, (res.reason, tr.text)
        assert res.answer == q.answer
        assert len(res.areas) == len(tr.steps)
        assert res.areas[0] == [((0.0, 0.0, 1.0, 1.0), pytest.approx(res.areas[0][0][1]))]


def test_chain_goes_coarse_to_fine(traced):
    kinds = collections.Counter()
    for _, q, tr in traced:
        steps = {s.kind: s for s in tr.steps}
        order = [s.kind for s in tr.steps]
        assert order[0] == "image" and order[-2:] == ["expanded", "target"]
        kinds.update(order)
        target, expanded = steps["target"], steps["expanded"]
        # Written target boxes contain the true ones (rounded outward), one per target.
        assert len(target.boxes) == len(q.target_boxes)
        for written, true in zip(target.boxes, q.target_boxes, strict=True):
            assert _contains(written, true)
        for t in target.boxes:  # every target lies in one expanded box
            assert any(_contains(e, t) for e in expanded.boxes)
        for a, b in zip(expanded.boxes, expanded.boxes[1:], strict=False):
            assert iou(a, b) == 0.0  # overlapping boxes were merged
        if "enclosing" in steps:
            enc = steps["enclosing"].boxes[0]
            assert len(expanded.boxes) > 1 and all(_contains(enc, e) for e in expanded.boxes)
        if "distractor" in steps:
            merged = (min(b[0] for b in expanded.boxes), min(b[1] for b in expanded.boxes),
                      max(b[2] for b in expanded.boxes), max(b[3] for b in expanded.boxes))
            assert iou(steps["distractor"].boxes[0], merged) < 0.001
    assert kinds["distractor"] > 0 and kinds["enclosing"] > 0


def test_area_depths_are_box_means(traced):
    for sc, _, tr in traced[:40]:
        res = check_format(tr.text)
        for area in res.areas:
            for box, d in area:
                assert d == pytest.approx(_box_mean(sc.depth, box), abs=5e-4 + 1e-9)


def test_distractor_about_half_the_time(scenes):
    sc = scenes[0]
    q = generate_questions(sc, 0, families=("count",))[0]
    n = sum(any(s.kind == "distractor" for s in build_trace(sc, q, seed=k).steps)
            for k in range(200))
    assert 60 <= n <= 120  # p = 1/2, minus the draws where no neighbour fits the frame


def test_templates_vary_and_are_deterministic(traced, scenes):
    firsts = {tr.steps[0].text.split(".")[0][:20] for _, _, tr in traced}
    assert len(firsts) >= 3
    sc = scenes[1]
    q = generate_questions(sc, 0)[0]
    assert build_trace(sc, q, 3).text == build_trace(sc, q, 3).text


def test_merge_and_round_helpers():
    assert merge_overlapping([(0, 0, 0.5, 0.5), (0.4, 0.4, 0.6, 0.6), (0.8, 0.8, 0.9, 0.9)]) == [
        (0.0, 0.0, 0.6, 0.6), (0.8, 0.8, 0.9, 0.9)]
    assert round_box_outward((0.12345, 0.3, 0.45601, 0.7)) == (0.123, 0.3, 0.457, 0.7)
    with pytest.raises(ValueError, match="target_boxes is empty"):
        reverse_expand([], np.random.default_rng(0), TraceConfig())


def test_external_step_texts():
    depth = np.linspace(0, 1, 100 * 50, dtype=np.float32).reshape(100, 50)
    tr = build_trace_from_steps(
        [[(0, 0, 1, 1)], [(0.1, 0.1, 0.42345, 0.5)]], ["all", "zoom"], "a cat", depth)
    res = check_format(tr.text)
    assert res.ok and res.areas[1][0][0] == (0.1, 0.1, 0.424, 0.5)


# ---------------------------------------------------------------------------- the checker


def test_checker_accepts_valid_and_whitespace():
    res = check_format(VALID)
    assert res.ok and res.reason == "ok" and res.answer == "yes"
    assert res.areas[1] == [((0.1, 0.2, 0.3, 0.4), 0.25), ((0.5, 0.5, 0.9, 0.95), 0.125)]
    spaced = VALID.replace("<area>", "\n  <area>").replace("</think>", "\n</think>\n")
    assert check_format("  " + spaced + "\n").ok


@pytest.mark.parametrize(
    "bad, why",
    [
        (VALID.replace('"depth":0.5}]', '"depth":0.5]'), "invalid JSON"),
        (VALID.replace("0.25", "0.2500"), "4 decimals"),
        (VALID.replace("0.25", "0.1234"), "4 decimals"),
        (VALID.replace("0.9,0.95", "1.2,0.95"), "outside [0, 1]"),
        (VALID.replace("[0.1,0.2,0.3,0.4]", "[0.3,0.2,0.1,0.4]"), "x2 <= x1"),
        (VALID.replace("[0.1,0.2,0.3,0.4]", "[0.1,0.4,0.3,0.4]"), "y2 <= y1"),
        (VALID.replace('"depth":0.125', '"depth":1.5'), "depth"),
        (VALID.replace('"depth":0.125', '"depth":-0.1'), "depth"),
        (VALID.replace('"depth":0.125', '"depth":NaN'), "NaN"),
        (VALID.replace("0.25", "2.5e-1"), "exponent"),
        (VALID.replace('"depth":0.125', '"depth":0.125,"label":"x"'), "exactly"),
        (VALID.replace("[0.1,0.2,0.3,0.4]", "[0.1,0.2,0.3]"), "4 numbers"),
        (VALID.replace('"depth":0.125', '"depth":0.125,"depth":0.4'), "duplicate key 'depth'"),
        (VALID.replace('"depth":0.125', '"depth":0.4,"depth":0.125'), "duplicate key 'depth'"),
        (VALID.replace('"depth":0.125', '"depth":0.125,"bbox_2d":[0.5,0.5,0.9,0.95]'), "duplicate key 'bbox_2d'"),
        (VALID.replace("[0.1,0.2,0.3,0.4]", "[0.1,0.2,true,0.4]"), "4 numbers"),
        (VALID.replace('[{"bbox_2d":[0,0,1,1],"depth":0.5}]', "[]"), "non-empty list"),
        (VALID.replace("<answer>yes</answer>", "<answer>  </answer>"), "answer is empty"),
        (VALID.replace("<text>Whole image.</text>", "<text> </text>"), "text 0 is empty"),
        (VALID.replace("<think>", "", 1), "expected <think>"),
        (VALID.replace("</think>", ""), "expected"),
        (VALID.replace("<answer>", ""), "expected <answer>"),
        (VALID.replace("</answer>", ""), "missing </answer>"),
        (VALID.replace("</text>", "", 1), "contains the tag"),
        (VALID.replace("<text>Whole image.</text>", ""), "expected <text>"),
        (VALID + " trailing", "trailing"),
        ("<think></think><answer>yes</answer>", "no (<area>, <text>) pair"),
        (VALID.replace("yes</answer>", "yes <think></answer>"), "contains the tag"),
        ("", "expected <think>"),
    ],
)
def test_checker_rejects(bad, why):
    res = check_format(bad)
    assert not res.ok and why in res.reason, res.reason
    assert res.areas == [] and res.answer is None


def test_duplicate_keys_score_zero_in_every_reward_reading_areas():
    """The issue's example: a repeated "depth" is rejected, so format, IoU and depth rewards are 0."""
    from sif_jax.rl.rewards import RewardConfig, RewardState, depth_reward, format_reward, iou_reward
    from tests.rl.helpers import make_batch

    dup = ('<think><area>[{"bbox_2d": [0.1, 0.2, 0.4, 0.6], "depth": 0.2, "depth": 0.4}]</area>'
           "<text>x</text></think><answer>B</answer>")
    assert check_format(dup.replace(', "depth": 0.4', "")).ok  # the same trace without the repeat is valid
    res = check_format(dup)
    assert not res.ok and "area 0" in res.reason and "duplicate key 'depth'" in res.reason
    batch = make_batch([dup], depth_maps=[np.full((8, 8), 0.2, np.float32)])
    for fn in (format_reward, iou_reward, depth_reward):
        assert fn(batch, RewardState(), RewardConfig()).rewards.tolist() == [0.0]


def test_checker_rejects_non_strings_and_deep_json():
    assert not check_format(None).ok
    assert not check_format(b"<think>").ok
    deep = "<think><area>" + "[" * 100000 + "</area><text>x</text></think><answer>a</answer>"
    assert not check_format(deep).ok


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_checker_never_raises_on_text(s):
    res = check_format(s)
    assert res.ok in (True, False) and isinstance(res.reason, str)


_PIECES = st.sampled_from([
    "<think>", "</think>", "<area>", "</area>", "<text>", "</text>", "<answer>", "</answer>",
    "[", "]", "{", "}", '"bbox_2d":', '"depth":', ",", "0.5", "1", "0", "1e5", "NaN", "x", " ",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=40), st.integers(0, len(VALID)), st.text(max_size=5))
def test_checker_never_raises_on_grammar_soup(pieces, cut, junk):
    assert check_format("".join(pieces)).ok in (True, False)
    assert check_format(VALID[:cut] + junk + VALID[cut:]).ok in (True, False)


_coord = st.integers(0, 1000)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_coord, _coord, _coord, _coord, _coord), min_size=1, max_size=4),
       st.text(alphabet="abc xyz.", min_size=1, max_size=20).filter(str.strip))
def test_written_areas_round_trip(raw, answer):
    boxes, depths = [], []
    for a, b, c, d, e in raw:
        x1, x2 = sorted((a, b))
        y1, y2 = sorted((c, d))
        if x2 == x1 or y2 == y1:
            continue
        boxes.append((x1 / 1000, y1 / 1000, x2 / 1000, y2 / 1000))
        depths.append(e / 1000)
    if not boxes:
        return
    text = f"<think><area>{area_json(boxes, depths)}</area><text>t</text></think>" \
           f"<answer>{answer}</answer>"
    res = check_format(text)
    assert res.ok, res.reason
    assert [b for b, _ in res.areas[0]] == [pytest.approx(b) for b in boxes]
    assert json.loads(area_json(boxes, depths))[0]["depth"] == pytest.approx(depths[0])


def test_fmt_number():
    assert [fmt_number(v) for v in (0, 1, 0.5, 0.12345, 0.9996, 1e-7)] == [
        "0", "1", "0.5", "0.123", "1", "0"]
