"""SIF records: schema, validation naming index and field, and the four readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sif_jax.data.questions import generate_questions
from sif_jax.data.records import (
    BOX_FIELD,
    SIFRecord,
    load_depth_png,
    read_gqa,
    read_sif_json,
    read_vsr,
    read_whatsup,
    record_errors,
    record_from_scene,
    validate_records,
    write_sif_json,
)
from sif_jax.data.traces import build_trace, check_format


def _image(path, size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(path)
    return path


def test_scene_records_round_trip(tmp_path, scenes):
    records = []
    for sc in scenes[:4]:
        q = generate_questions(sc, 0)[0]
        records.append(record_from_scene(sc, q, build_trace(sc, q, 0), tmp_path / "img"))
    assert record_errors(records, require_boxes=True) == []
    write_sif_json(records, tmp_path / "sif.json")
    back = read_sif_json(tmp_path / "sif.json")
    assert [r.to_json() for r in back] == [r.to_json() for r in records]
    assert check_format(back[0].messages[1]["content"]).ok
    assert back[0].messages[0]["content"].startswith("<image>")
    depth = load_depth_png(back[0].depth_image)
    np.testing.assert_allclose(depth, scenes[0].depth, atol=1 / 65535)


def test_relative_paths_resolve_against_the_file(tmp_path):
    _image(tmp_path / "images" / "a.png")
    rows = [{"image": "images/a.png", "problem": "q?", "response": "a",
             "normalized_solution_round": {"bbox_3d": [[0.1, 0.1, 0.5, 0.5]]},
             "messages": [], "images": ["images/a.png"], "depth_image": None}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    recs = read_sif_json(tmp_path / "d.json")
    assert recs[0].image == str(tmp_path / "images" / "a.png")
    assert record_errors(recs) == []


def test_malformed_records_name_index_and_field(tmp_path):
    good = _image(tmp_path / "ok.png")
    base = {"image": "ok.png", "problem": "Where?", "response": "left",
            "normalized_solution_round": {"bbox_3d": [[0.1, 0.1, 0.5, 0.5]]},
            "messages": [{"role": "user", "content": "<image>Where?"}], "images": ["ok.png"]}

    def variant(**kw):
        row = json.loads(json.dumps(base))
        row.update(kw)
        return row

    rows = [
        variant(),                                                          # 0 fine
        variant(normalized_solution_round={"bbox_3d": [[0.5, 0.1, 0.4, 0.3]]}),   # 1
        variant(normalized_solution_round={"bbox_3d": [[0.1, 0.1, 0.5, 0.5],
                                                       [0.1, 0.2, 1.5, 0.3]]}),   # 2
        variant(image="missing.png"),                                       # 3
        variant(response=""),                                               # 4
        variant(messages=[{"role": "bot", "content": "hi"}]),               # 5
        variant(normalized_solution_round={"bbox_3d": "0.1 0.2"}),          # 6
        variant(normalized_solution_round={"bbox_3d": [[0.1, 0.6, 0.5, 0.6]]}),   # 7
        variant(problem=None, depth_image="nope.png"),                      # 8
        "not an object",                                                    # 9
    ]
    (tmp_path / "bad.json").write_text(json.dumps(rows))
    recs = read_sif_json(tmp_path / "bad.json")
    assert recs[0].image == str(good)
    errors = record_errors(recs)
    joined = "\n".join(errors)
    assert not any(e.startswith("record 0:") for e in errors)
    assert f"record 1: field '{BOX_FIELD}'[0] = [0.5, 0.1, 0.4, 0.3]: x2 <= x1" in errors
    assert f"record 2: field '{BOX_FIELD}'[1] = [0.1, 0.2, 1.5, 0.3]: coordinate outside [0, 1]" \
        in errors
    assert f"record 3: field 'image' = {str(tmp_path / 'missing.png')!r}: image file not found" \
        in errors
    assert "record 4: field 'response' = '': empty answer" in errors
    assert "record 5: field 'messages'[0]" in joined
    assert f"record 6: field '{BOX_FIELD}' = '0.1 0.2': expected a list of boxes" in errors
    assert f"record 7: field '{BOX_FIELD}'[0] = [0.1, 0.6, 0.5, 0.6]: y2 <= y1" in errors
    assert "record 8: field 'problem' = None: empty problem" in errors
    assert "record 8: field 'depth_image'" in joined
    assert "record 9: field 'image' = None: missing image path" in errors
    with pytest.raises(ValueError) as info:
        validate_records(recs)
    for e in errors:
        assert e in str(info.value)
    validate_records(recs[:1])  # a clean list passes silently


def test_require_boxes_and_choices():
    r = SIFRecord(image="x.png", problem="p", response="c", choices=["a", "b"])
    errors = record_errors([r], check_files=False, require_boxes=True)
    assert f"record 0: field '{BOX_FIELD}' = []: no target box" in errors
    assert "record 0: field 'response' = 'c': answer is not one of the choices" in errors


def test_invalid_json_names_file_and_line(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('[\n{"image": 1,\n]')
    with pytest.raises(ValueError, match=r"broken.json: invalid JSON at line 3"):
        read_sif_json(p)
    q = tmp_path / "broken.jsonl"
    q.write_text('{"image": "a"}\n{oops}\n')
    with pytest.raises(ValueError, match=r"broken.jsonl: invalid JSON on line 2"):
        read_vsr(q, tmp_path)


def test_gqa_reader(tmp_path):
    _image(tmp_path / "images" / "2354786.jpg", (500, 333))
    questions = {
        "02930152": {
            "imageId": "2354786", "question": "Is the sky dark?", "answer": "yes",
            "fullAnswer": "Yes, the sky is dark.",
            "annotations": {"question": {"2": "2354786_sky"}, "answer": {},
                            "fullAnswer": {"2": "2354786_sky"}},
            "types": {"structural": "verify"},
        },
        "07333408": {
            "imageId": "2354786", "question": "What is on the white wall?", "answer": "pipe",
            "fullAnswer": "The pipe is on the wall.",
            "annotations": {"question": {"4": "wall1"}, "answer": {"0": "pipe1"},
                            "fullAnswer": {"1": "pipe1", "5": "wall1"}},
        },
        "09999999": {
            "imageId": "2354786", "question": "Where is the ghost?", "answer": "nowhere",
            "annotations": {"question": {"3": "ghost"}},
        },
    }
    graphs = {"2354786": {"width": 500, "height": 333, "objects": {
        "2354786_sky": {"name": "sky", "x": 0, "y": 0, "w": 500, "h": 100},
        "wall1": {"name": "wall", "x": 100, "y": 50, "w": 200, "h": 150},
        "pipe1": {"name": "pipe", "x": 450, "y": 300, "w": 100, "h": 50},  # past the border
    }}}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "sg.json").write_text(json.dumps(graphs))
    recs = {r.id: r for r in read_gqa(tmp_path / "q.json", tmp_path / "sg.json",
                                      tmp_path / "images")}
    assert recs["02930152"].boxes == [[0.0, 0.0, 1.0, pytest.approx(100 / 333)]]
    assert recs["02930152"].response == "yes" and recs["02930152"].source == "gqa"
    wall, pipe = recs["07333408"].boxes
    assert wall == [pytest.approx(0.2), pytest.approx(50 / 333), pytest.approx(0.6),
                    pytest.approx(200 / 333)]
    assert pipe == [pytest.approx(0.9), pytest.approx(300 / 333), 1.0, 1.0]  # clipped
    assert recs["09999999"].boxes == [] and recs["09999999"].meta["missing_objects"] == ["ghost"]
    assert record_errors(list(recs.values())) == []
    assert recs["07333408"].image == str(tmp_path / "images" / "2354786.jpg")


def test_vsr_reader(tmp_path):
    _image(tmp_path / "000000085637.jpg")
    lines = [
        {"image": "000000085637.jpg", "caption": "The umbrella is under the bed.", "label": 1,
         "relation": "under"},
        {"image": "000000085637.jpg", "caption": "The bed is on the umbrella.", "label": 0,
         "relation": "on"},
        {"image": "000000085637.jpg", "caption": "Odd.", "label": "maybe", "relation": "on"},
    ]
    (tmp_path / "vsr.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    recs = read_vsr(tmp_path / "vsr.jsonl", tmp_path)
    assert [r.response for r in recs] == ["yes", "no", ""]
    assert "The umbrella is under the bed." in recs[0].problem
    assert recs[0].meta["relation"] == "under" and recs[0].choices == ["yes", "no"]
    errors = record_errors(recs)
    assert "record 2: field 'response' = '': empty answer" in errors
    assert "record 2: field 'label' = 'maybe': expected 1 (true) or 0 (false)" in errors
    assert all(e.startswith("record 2:") for e in errors)


def test_whatsup_reader(tmp_path):
    _image(tmp_path / "data" / "controlled_images" / "beer-bottle_on_armchair.jpeg")
    rows = [{"image_path": "data/controlled_images/beer-bottle_on_armchair.jpeg",
             "caption_options": ["A beer bottle on a armchair", "A beer bottle under a armchair",
                                 "A beer bottle to the left of a armchair",
                                 "A beer bottle to the right of a armchair"]}]
    (tmp_path / "controlled_images_dataset.json").write_text(json.dumps(rows))
    recs = read_whatsup(tmp_path / "controlled_images_dataset.json", tmp_path)
    r = recs[0]
    assert r.response == "A beer bottle on a armchair"
    assert sorted(r.choices) == sorted(rows[0]["caption_options"])
    assert all(c in r.problem for c in r.choices)
    assert record_errors(recs) == []
    again = read_whatsup(tmp_path / "controlled_images_dataset.json", tmp_path)
    assert again[0].choices == r.choices  # seeded shuffle


def test_usable_records_skip_count_and_strict(tmp_path):
    from sif_jax.data.records import record_problems, usable_records

    good = SIFRecord(image="img.png", problem="p", response="a", boxes=[[0.1, 0.1, 0.5, 0.5]], id="g")
    zero = SIFRecord(image="img.png", problem="p", response="a", boxes=[[1.0, 0.2, 1.0, 0.4]], id="gqa-7")
    both = SIFRecord(image="", problem="", response="a", id="")
    records = [good, zero, good, both]
    problems = record_problems(records, check_files=False)
    assert sorted(problems) == [1, 3] and len(problems[3]) == 2
    assert record_errors(records, check_files=False) == problems[1] + problems[3]
    kept, skipped = usable_records(records, check_files=False)
    assert kept == [good, good]
    assert skipped.count == 2 and skipped.ids == ("gqa-7", "3")  # no id: the record index
    assert skipped.errors[0] == ("record 1: field 'normalized_solution_round.bbox_3d'[0] = [1.0, 0.2, 1.0, 0.4]: "
                                 "x2 <= x1")
    with pytest.raises(ValueError, match=r"3 problem\(s\) in 4 records"):
        usable_records(records, strict=True, check_files=False)
    assert usable_records([good], strict=True, check_files=False)[0] == [good]
