"""One bad record does not abort an evaluation: every reader's bad records are skipped, counted and
named (`data.strict_records` makes them an error); no model needed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import configs.eval as eval_config
from sif_jax.data.records import SkippedRecords, usable_records
from sif_jax.data.sources import eval_source


def _data(source: str, **kw):
    c = eval_config.get_config().data
    c.source = source
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name in ("a.png", "b.png", "g1.jpg", "g2.jpg"):
        Image.fromarray(np.full((56, 56, 3), 120, np.uint8)).save(d / name, format="PNG")
    return d


def _gqa(tmp_path, images):
    graphs = {"g1": {"width": 100, "height": 100, "objects": {
        "o1": {"name": "cube", "x": 10, "y": 10, "w": 20, "h": 20},
        "o2": {"name": "ghost", "x": 120, "y": 10, "w": 30, "h": 20}}},  # right of the image: clips to zero width
              "g2": {"width": 100, "height": 100, "objects": {"o3": {"name": "cone", "x": 50, "y": 0, "w": 50,
                                                                     "h": 100}}}}
    questions = {
        "q1": {"imageId": "g1", "question": "Is there a cube?", "answer": "yes",
               "annotations": {"question": {"3": "o1"}}},
        "q2": {"imageId": "g1", "question": "Is the ghost left?", "answer": "no",
               "annotations": {"question": {"2": "o2"}}},
        "q3": {"imageId": "g2", "question": "Is there a cone?", "answer": "yes",
               "annotations": {"question": {"3": "o3"}}},
    }
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "g.json").write_text(json.dumps(graphs))
    return f"gqa:{tmp_path / 'q.json'}:{tmp_path / 'g.json'}:{images}", "q2", "x2 <= x1"


def _vsr(tmp_path, images):
    rows = [{"image": "a.png", "caption": "c0", "label": 1}, {"image": "b.png", "caption": "c1", "label": "maybe"},
            {"image": "a.png", "caption": "c2", "label": 0}]
    (tmp_path / "v.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f"vsr:{tmp_path / 'v.jsonl'}:{images}", "1", "field 'label' = 'maybe'"


def _whatsup(tmp_path, images):
    rows = [{"image_path": "a.png", "caption_options": ["A cup left of a plate", "A cup right of a plate"]},
            {"image_path": "missing.png", "caption_options": ["A cup on a plate", "A cup under a plate"]},
            {"image_path": "b.png", "caption_options": ["A mug behind a box", "A mug in front of a box"]}]
    (tmp_path / "w.json").write_text(json.dumps(rows))
    return f"whatsup:{tmp_path / 'w.json'}:{images}", "1", "image file not found"


def _sif(tmp_path, images):
    good = {"image": "images/a.png", "problem": "Where is the cube?", "response": "left",
            "normalized_solution_round": {"bbox_3d": [[0.1, 0.1, 0.5, 0.5]]}}
    bad = {**good, "id": "s-bad", "normalized_solution_round": {"bbox_3d": [[0.5, 0.1, 0.5, 0.6]]}}
    (tmp_path / "s.json").write_text(json.dumps([{**good, "id": "s0"}, bad, {**good, "id": "s2"}]))
    return f"sif_json:{tmp_path / 's.json'}", "s-bad", "x2 <= x1"


@pytest.mark.parametrize("make", [_gqa, _vsr, _whatsup, _sif], ids=["gqa", "vsr", "whatsup", "sif_json"])
def test_bad_record_is_skipped_counted_and_named(tmp_path, images, make):
    source, bad_id, why = make(tmp_path, images)
    got = eval_source(_data(source, num_examples=0))
    assert len(got) == 2
    assert got.skipped.count == 1 and got.skipped.ids == (bad_id,)
    assert why in got.skipped.errors[0] and got.skipped.errors[0].startswith("record 1: ")
    assert bad_id not in [got.records[i].id for i in range(2)]
    assert got[1]["image"].shape == (56, 56, 3)  # the remaining records still load
    assert "skipped 1 invalid records (ids: " + bad_id in got.skipped.summary()
    assert got.skipped.to_json() == {"count": 1, "ids": [bad_id], "errors": list(got.skipped.errors)}
    with pytest.raises(ValueError, match=f"strict_records=True.*record 1: .*{why}"):
        eval_source(_data(source, num_examples=0, strict_records=True))


def test_gqa_zero_area_box_record_is_the_one_skipped(tmp_path, images):
    source, _, _ = _gqa(tmp_path, images)
    got = eval_source(_data(source, num_examples=0))
    assert [r.id for r in got.records] == ["q1", "q3"]
    np.testing.assert_allclose(got[0]["boxes"], [[0.1, 0.1, 0.3, 0.3]])
    assert "[1.0, 0.1, 1.0, 0.3]" in got.skipped.errors[0]


def test_all_records_bad_is_an_error(tmp_path, images):
    (tmp_path / "v.jsonl").write_text(json.dumps({"image": "nowhere.png", "caption": "x", "label": 1}) + "\n")
    with pytest.raises(ValueError, match=r"no valid record; skipped 1 invalid records \(ids: 0\).*file not found"):
        eval_source(_data(f"vsr:{tmp_path / 'v.jsonl'}:{images}"))


def test_skipped_ids_are_capped_and_counted():
    from sif_jax.data.records import SHOWN_IDS, SIFRecord

    records = [SIFRecord(image="", problem="p", response="a", id=f"r{i}") for i in range(SHOWN_IDS + 5)]
    kept, skipped = usable_records(records, check_files=False)
    assert kept == [] and skipped.count == SHOWN_IDS + 5
    assert skipped.ids == tuple(f"r{i}" for i in range(SHOWN_IDS))
    assert "... 5 more" in skipped.summary()
    assert usable_records(records[:0]) == ([], SkippedRecords())
