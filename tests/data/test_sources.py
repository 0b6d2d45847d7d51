"""The source registry (`data.sources`) and the readers of each real format, on small files written
from the formats' documented fields (images made here)."""

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sif_jax.data import sources
from sif_jax.data.records import read_gqa, read_sayo, read_sif_json, read_vsr, read_whatsup, record_errors
from sif_jax.data.regions import focus_region_mask


def _png(path, size=(56, 56), colour=(200, 40, 40)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(path)


def _png_bytes(size):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_split_spec_keeps_urls_and_names_bad_sources():
    assert sources.split_spec("tfds:gs://bucket/data:sif_local") == ("tfds", ["gs://bucket/data", "sif_local"])
    assert sources.split_spec("sif_json:a.json") == ("sif_json", ["a.json"])
    with pytest.raises(ValueError, match=r"unknown source 'coco'; expected builtin, tfds"):
        sources.split_spec("coco:x")
    with pytest.raises(ValueError, match=r"config.data.source='gqa:q.json': expected gqa:<questions.json>"):
        sources.split_spec("gqa:q.json")
    with pytest.raises(FileNotFoundError, match=r"'nowhere.json' does not exist"):
        sources.check_spec("sayo:nowhere.json")


def test_tfds_build_found_at_any_path(tmp_path):
    for rel in ("sif_spatial/tiny/1.0.0", "sif_local/1.0.0"):
        os.makedirs(tmp_path / rel)
        (tmp_path / rel / "dataset_info.json").write_text("{}")
    data_dir = str(tmp_path)
    assert sources.resolve_tfds([str(tmp_path / "sif_spatial" / "tiny")], "s") == ("sif_spatial/tiny", data_dir)
    assert sources.resolve_tfds([str(tmp_path / "sif_local" / "1.0.0")], "s") == ("sif_local", data_dir)
    assert sources.resolve_tfds([data_dir, "tiny"], "s") == ("sif_spatial/tiny", data_dir)
    with pytest.raises(ValueError, match=r"holds several builds \(sif_local, sif_spatial/tiny\).*tfds:"):
        sources.resolve_tfds([data_dir], "s")
    with pytest.raises(ValueError, match=r"no sif_spatial/\* or sif_local build.*--size=small"):
        sources.resolve_tfds([str(tmp_path / "sif_local" / "nothing")], "s")


def test_sif_json_as_produce_py_writes_it(tmp_path):
    # SIFThinker's produce.py record; paths relative to its GRPO-SIF folder, "../data/..."
    _png(tmp_path / "data" / "viscot" / "a.jpg")
    _png(tmp_path / "data" / "viscot" / "a_d.png")
    row = {"dataset": "gqa", "image": "../data/viscot/a.jpg", "depth_image": "../data/viscot/a_d.png",
           "problem": "What is left of the cup?",
           "normalized_solution_round": {"bbox_3d": [[0.1, 0.2, 0.5, 0.6]], "illegal_content": False},
           "response": "a plate",
           "messages": [{"content": "Original image: <image>\nDepth image: <image>\nWhat is left of the cup?",
                         "role": "user"},
                        {"content": "<think><area>[{\"bbox_2d\":[0.1,0.2,0.5,0.6],\"depth\":0.3}]</area>"
                                    "<text>A plate.</text></think><answer>a plate</answer>", "role": "assistant"}],
           "images": ["../data/viscot/a.jpg", "../data/viscot/a_d.png"]}
    for where in (tmp_path / "SIF-50K.json", tmp_path / "data" / "SIF-50K.json", tmp_path / "GRPO-SIF" / "x.json"):
        os.makedirs(where.parent, exist_ok=True)
        where.write_text(json.dumps([row]))
        (r,) = read_sif_json(where)
        assert os.path.samefile(r.image, tmp_path / "data" / "viscot" / "a.jpg")
        assert os.path.samefile(r.depth_image, tmp_path / "data" / "viscot" / "a_d.png")
        assert record_errors([r]) == [] and r.meta["dataset"] == "gqa"
    src = sources.open_records(f"sif_json:{tmp_path / 'SIF-50K.json'}", strict=True)
    assert src.with_traces is False and src[0]["trace"] == ""
    assert sources.RecordSource(src.records, with_traces=True)[0]["trace"].startswith("<think><area>")


def test_gqa_streams_and_reports_missing_targets(tmp_path, capsys):
    _png(tmp_path / "img" / "1.jpg", (100, 50))
    questions = {"q1": {"imageId": "1", "question": "Is the cup left of the plate?", "answer": "yes",
                        "annotations": {"question": {"2": "o1", "6": "o9"}, "answer": {}, "fullAnswer": {}}},
                 "q2": {"imageId": "1", "question": "What colour is it?", "answer": "red",
                        "annotations": {"question": {"3": "o1"}}}}
    graphs = {"1": {"width": 100, "height": 50, "objects": {"o1": {"name": "cup", "x": 10, "y": 5, "w": 20, "h": 10}}},
              "unused": {"width": 1, "height": 1, "objects": {}}}
    (tmp_path / "q.json").write_text(json.dumps(questions, indent=2))
    (tmp_path / "g.json").write_text(json.dumps(graphs))
    recs = {r.id: r for r in read_gqa(tmp_path / "q.json", tmp_path / "g.json", tmp_path / "img")}
    np.testing.assert_allclose(recs["q1"].boxes, [[0.1, 0.1, 0.3, 0.3]])
    assert recs["q1"].meta["missing_objects"] == ["o9"] and "missing_objects" not in recs["q2"].meta
    src = sources.open_records(f"gqa:{tmp_path / 'q.json'}:{tmp_path / 'g.json'}:{tmp_path / 'img'}", strict=True)
    assert len(src) == 2
    err = capsys.readouterr().err
    assert "1 question(s) name 1 target object(s) that their scene graph lacks" in err and "ids: q1" in err


def test_vsr_missing_caption_is_named_never_none(tmp_path):
    _png(tmp_path / "a.jpg")
    lines = [{"image": "a.jpg", "caption": "The cup is left of the plate.", "label": 1},
             {"image": "a.jpg", "label": 0}]
    (tmp_path / "v.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    recs = read_vsr(tmp_path / "v.jsonl", tmp_path)
    assert "None" not in recs[1].problem
    assert record_errors(recs)[0] == ("record 1: field 'caption' = None: missing caption (the statement the "
                                      "question asks about)")
    src = sources.open_records(f"vsr:{tmp_path / 'v.jsonl'}:{tmp_path}", strict=False)
    assert len(src) == 1 and src.skipped.ids == ("1",)
    with pytest.raises(ValueError, match=r"strict_records=True\): record 1: field 'caption'"):
        sources.open_records(f"vsr:{tmp_path / 'v.jsonl'}:{tmp_path}", strict=True)


def test_whatsup_coco_and_vg_spatial_lists(tmp_path):
    _png(tmp_path / "val2017" / "000000011760.jpg")
    _png(tmp_path / "vg_images" / "2417.jpg")
    rows = [["11760", "A dog to the left of a bench", "A dog to the right of a bench"],
            [2417, "A cup on a table", "A cup under a table"],
            [2417, "Only one caption"],
            {"image_path": "vg_images/2417.jpg"}]
    (tmp_path / "coco_qa_one_obj.json").write_text(json.dumps(rows))
    recs = read_whatsup(tmp_path / "coco_qa_one_obj.json", tmp_path)
    assert recs[0].image.endswith(os.path.join("val2017", "000000011760.jpg"))
    assert recs[1].image.endswith(os.path.join("vg_images", "2417.jpg"))
    assert recs[0].response == "A dog to the left of a bench" and sorted(recs[0].choices) == sorted(rows[0][1:])
    errors = record_errors(recs)
    assert errors[0].startswith("record 2: field 'caption_options' = ['Only one caption']: expected >= 2")
    assert any(e.startswith("record 3: field 'caption_options' = None") for e in errors)
    src = sources.open_records(f"whatsup:{tmp_path / 'coco_qa_one_obj.json'}:{tmp_path}", strict=False)
    assert len(src) == 2 and src.skipped.count == 2 and src[0]["relation"] == "left of"


def _sayo_rows():
    return [
        {"id": "s0", "type": "spatial", "question": "Where is the cup?", "answer": "The cup is on the left.",
         "short_answer": "left", "image": _png_bytes((112, 56)), "focus_area": [[0, 1], [4, 4]]},
        {"id": "s1", "type": "count", "question": "How many cups?", "answer": "two", "short_answer": "2",
         "image": _png_bytes((112, 56)), "focus_area": [[7, 8]]},  # 8 is outside the 2 x 4 grid
    ]


def test_sayo_parquet_and_json(tmp_path):
    pq.write_table(pa.Table.from_pylist(_sayo_rows()), tmp_path / "sayo.parquet")
    recs = read_sayo(tmp_path / "sayo.parquet")
    want = np.zeros((2, 4), bool)
    want[0, :2] = want[1, 0] = True
    np.testing.assert_array_equal(recs[0].focus, want)
    assert recs[0].response == "left" and recs[0].meta["long_answer"] == "The cup is on the left."
    assert record_errors(recs, check_files=False)[0].startswith("record 1: field 'focus_area' = [[7, 8]]: range "
                                                                "[7, 8]: outside the 2 x 4 grid")
    # JSON with image paths relative to the file
    _png(tmp_path / "img" / "a.png", (112, 56))
    rows = [{**r, "image": "img/a.png"} for r in _sayo_rows()[:1]]
    (tmp_path / "sayo.json").write_text(json.dumps(rows))
    (j,) = read_sayo(tmp_path / "sayo.json")
    np.testing.assert_array_equal(j.focus, want)
    src = sources.open_records(f"sayo:{tmp_path / 'sayo.parquet'}", strict=False)
    assert len(src) == 1 and src.skipped.ids == ("s1",)
    example = src[0]
    assert example["image"].shape == (56, 112, 3) and example["boxes"].shape == (0, 4)
    np.testing.assert_array_equal(example["focus"], want)


def test_sayo_parquet_without_focus_area_names_the_column(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"id": "x", "question": "q", "image": b""}]), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['focus_area'\]"):
        read_sayo(tmp_path / "bad.parquet")


def test_focus_mask_on_the_models_grid():
    focus = np.array([[True, False], [False, True]])
    same = focus_region_mask(focus, (1, 4, 4), 28, 2)  # 2 x 2 merged tokens: the same grid
    np.testing.assert_array_equal(same, focus.reshape(-1))
    finer = focus_region_mask(focus, (1, 8, 8), 28, 2)  # image resized x2: each cell -> 2 x 2 tokens
    np.testing.assert_array_equal(finer, np.kron(focus, np.ones((2, 2), bool)).reshape(-1))
    with pytest.raises(ValueError, match=r"2 x 2 token grid, but the model sees this image as 3 x 3 tokens of 32 px"):
        focus_region_mask(focus, (1, 6, 6), 32, 2)
    # SAYO's 16 x 16 on a shrunk image's 4 x 4 tokens: a token is in when any of its 4 x 4 focus cells is
    sayo = np.zeros((16, 16), bool)
    sayo[5, 9] = sayo[12:14, 0:2] = True
    coarse = focus_region_mask(sayo, (1, 8, 8), 28, 2).reshape(4, 4)
    want = np.zeros((4, 4), bool)
    want[1, 2] = want[3, 0] = True
    np.testing.assert_array_equal(coarse, want)
    mixed = focus_region_mask(np.array([[True, False, False, False]]), (1, 4, 4), 28, 2).reshape(2, 2)
    np.testing.assert_array_equal(mixed, [[True, False], [True, False]])  # rows refine x2, columns pool /2


def test_split_records_holds_out_a_seeded_subset():
    recs = list(range(10))
    train, held = sources.split_records(recs, 3, seed=0)
    assert len(held) == 3 and sorted(train + held) == recs
    assert sources.split_records(recs, 3, seed=0) == (train, held)
    with pytest.raises(ValueError, match=r"config.data.eval_examples=10: the source has only 10 usable"):
        sources.split_records(recs, 10, seed=0)
