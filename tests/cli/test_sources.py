"""Eval data sources: local GQA / VSR / WhatsUp / SIF files -> pipeline raw examples (no model)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import configs.eval as eval_config
from sif_jax.data.pipeline import Preprocessor
from sif_jax.data.sources import eval_source
from sif_jax.data.tokenizer import BuiltinTokenizer
from sif_jax.errors import InputError
from sif_jax.model.config import tiny


def _data(source: str, **kw):
    c = eval_config.get_config().data
    c.source = source
    for k, v in kw.items():
        c[k] = v
    return c


def test_gqa_records_become_examples_with_boxes(cli_files, tmp_path):
    image_dir = tmp_path / "gqa_images"
    image_dir.mkdir()
    shutil.copyfile(cli_files["images"][0], image_dir / "g1.jpg")  # PIL reads by content, not extension
    questions = {"q1": {"imageId": "g1", "question": "Is the cube left of the sphere?", "answer": "yes",
                        "types": {"structural": "verify", "semantic": "rel"},
                        "annotations": {"question": {"2": "o1"}, "answer": {}, "fullAnswer": {}}}}
    graphs = {"g1": {"width": 112, "height": 112, "objects": {"o1": {"name": "cube", "x": 28, "y": 56, "w": 28,
                                                                     "h": 28}}}}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "g.json").write_text(json.dumps(graphs))
    source = eval_source(_data(f"gqa:{tmp_path / 'q.json'}:{tmp_path / 'g.json'}:{image_dir}"))
    ex = source[0]
    assert ex["family"] == "verify" and ex["split"] == "gqa" and ex["answer"] == "yes"
    np.testing.assert_allclose(ex["boxes"], [[0.25, 0.5, 0.5, 0.75]])
    assert ex["image"].shape == (112, 112, 3) and ex["image"].dtype == np.uint8
    out = Preprocessor(BuiltinTokenizer(), tiny())(ex)
    assert out["region_cells"].sum() == 1  # one 28 px cell


def test_vsr_whatsup_examples(cli_files):
    vsr = eval_source(_data(f"vsr:{cli_files['vsr']}:{cli_files['image_dir']}", num_examples=2))
    assert len(vsr) == 2 and vsr[1]["answer"] == "no" and vsr[1]["relation"] == "behind"
    assert vsr[0]["choices"] == ["yes", "no"] and vsr[0]["boxes"].shape == (0, 4)
    wu = eval_source(_data(f"whatsup:{cli_files['whatsup']}:{cli_files['image_dir']}"))
    assert wu[0]["answer"] in wu[0]["choices"] and wu[0]["relation"] == "left of" and wu[1]["relation"] == "behind"


def test_bad_record_files_name_the_problem(cli_files, tmp_path):
    (tmp_path / "v.jsonl").write_text(json.dumps({"image": "missing.png", "caption": "x", "label": 1}) + "\n")
    with pytest.raises(ValueError, match="missing.png.*image file not found"):
        eval_source(_data(f"vsr:{tmp_path / 'v.jsonl'}:{tmp_path}"))
    (tmp_path / "broken.png").write_text("not an image")
    (tmp_path / "w.jsonl").write_text(json.dumps({"image": "broken.png", "caption": "x", "label": 0}) + "\n")
    source = eval_source(_data(f"vsr:{tmp_path / 'w.jsonl'}:{tmp_path}"))
    with pytest.raises(InputError, match="cannot read record '0' image"):
        source[0]
    with pytest.raises(ValueError, match="expected vsr:<file.jsonl>:<image_dir>"):
        eval_source(_data("vsr:only_one_part"))
    with pytest.raises(ValueError, match="expected builtin"):
        eval_source(_data("coco:x"))
