"""TFDS builders: build as array_record, read with tfds.data_source, with TensorFlow blocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sif_jax.data.questions import generate_questions
from sif_jax.data.records import record_from_scene, write_sif_json
from sif_jax.data.traces import check_format

# Runs in a fresh interpreter where `import tensorflow` fails, whether or not TF is installed.
_SCRIPT = textwrap.dedent("""
    import importlib.machinery, importlib.util, json, sys

    class _PathFinderWithoutTF(importlib.machinery.PathFinder):
        # The standard path finder, blind to tensorflow: as if it were not installed.

        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                return None
            return importlib.machinery.PathFinder.find_spec(name, path, target)

    sys.meta_path[:] = [_PathFinderWithoutTF if f is importlib.machinery.PathFinder else f
                        for f in sys.meta_path]
    assert importlib.util.find_spec("tensorflow") is None
    import numpy as np
    import tensorflow_datasets as tfds
    from sif_jax.data import tfds_sif
    from sif_jax.data.scenes import generate_scene

    data_dir = sys.argv[1]
    tfds_sif.main(["--size=tiny", f"--data_dir={data_dir}"])
    out = {"tf_loaded": "tensorflow" in sys.modules}
    for split in ("train", "test"):
        src = tfds.data_source("sif_spatial/tiny", split=split, data_dir=data_dir, download=False)
        out[split + "_len"] = len(src)
        checked = []
        for k in (0, 3, len(src) - 1):
            ex = tfds_sif.decode_example(src[k])
            seed = int(ex["scene_seed"])
            want = tfds_sif.scene_example(seed)
            scene = generate_scene(seed)
            checked.append({
                "seed": seed,
                "image_equal": bool(np.array_equal(ex["image"], scene.image)),
                "depth_err": float(np.abs(ex["depth"] - scene.depth).max()),
                "text_equal": all(ex[f] == want[f] for f in ("problem", "answer", "trace", "id",
                                                             "family", "split")),
                "choices_equal": ex["choices"] == want["choices"],
                "boxes_equal": bool(np.array_equal(ex["boxes"], want["boxes"])),
                "trace": ex["trace"],
            })
        out[split] = checked
    print("RESULT" + json.dumps(out))
""")


def test_sif_spatial_round_trip_without_tensorflow(tmp_path):
    env = dict(os.environ, TFDS_DISABLE_GCS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "tfds")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    assert out["tf_loaded"] is False
    assert out["train_len"] == 32 and out["test_len"] == 8
    files = sorted(os.listdir(tmp_path / "tfds" / "sif_spatial" / "tiny" / "1.0.0"))
    assert any(".array_record-" in f for f in files), files
    seeds = set()
    for split in ("train", "test"):
        for ex in out[split]:
            seeds.add(ex["seed"])
            assert ex["image_equal"] and ex["depth_err"] <= 1 / 65535 + 1e-7
            assert ex["text_equal"] and ex["choices_equal"] and ex["boxes_equal"]
            assert check_format(ex["trace"]).ok
    assert all(s >= 1_000_000_000 for s in (e["seed"] for e in out["test"]))
    assert all(s < 32 for s in (e["seed"] for e in out["train"]))


def test_sif_local_round_trip(tmp_path, scenes):
    tfds = pytest.importorskip("tensorflow_datasets")
    from sif_jax.data import tfds_sif

    manual = tmp_path / "manual"
    records = []
    for sc in scenes[:5]:
        q = generate_questions(sc, 0, families=("relation", "count"))[0]
        from sif_jax.data.traces import build_trace

        records.append(record_from_scene(sc, q, build_trace(sc, q, 0), manual / "images"))
    for r in records:  # store paths relative to the json, as SIF-50K does
        r.image = os.path.relpath(r.image, manual)
        r.depth_image = os.path.relpath(r.depth_image, manual)
        r.images = [r.image]
    write_sif_json(records, manual / "sif.json")
    tfds_sif.build(tmp_path / "data", local_dir=str(manual))
    src = tfds.data_source("sif_local", split="train", data_dir=str(tmp_path / "data"),
                           download=False)
    assert len(src) == 5
    got = sorted((tfds_sif.decode_example(src[i]) for i in range(5)), key=lambda e: e["id"])
    want = sorted(zip(records, scenes[:5], strict=True), key=lambda rs: rs[0].id)
    for ex, (rec, sc) in zip(got, want, strict=True):
        assert ex["id"] == rec.id and ex["answer"] == rec.response
        np.testing.assert_array_equal(ex["image"], sc.image)
        np.testing.assert_allclose(ex["depth"], sc.depth, atol=1 / 65535 + 1e-7)
        np.testing.assert_allclose(ex["boxes"], np.asarray(rec.boxes, np.float32))
        assert ex["messages"] == rec.messages
    # a local build has a train split only: training holds out its last examples, evaluation reads it
    from sif_jax.data import sources

    spec = f"tfds:{tmp_path / 'data'}:sif_local"
    assert sources.tfds_split_names(spec) == ["train"]
    train, held = sources.tfds_train_and_held(spec, 2)
    assert (len(train), len(held)) == (3, 2)
    assert {train[i]["id"] for i in range(3)} | {held[i]["id"] for i in range(2)} == {r.id for r in records}
    assert sources.tfds_train_and_held(spec, 0)[1] is None
    with pytest.raises(ValueError, match="eval_examples=5"):
        sources.tfds_train_and_held(spec, 5)


def test_sif_local_rejects_bad_records(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from sif_jax.data import tfds_sif

    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "sif.json").write_text(json.dumps([
        {"image": "nowhere.png", "problem": "p", "response": "a",
         "normalized_solution_round": {"bbox_3d": [[0.6, 0.1, 0.2, 0.3]]}}]))
    with pytest.raises(ValueError, match=r"record 0: field 'normalized_solution_round.bbox_3d'"
                                         r"\[0\] = \[0.6, 0.1, 0.2, 0.3\]: x2 <= x1"):
        tfds_sif.build(tmp_path / "data", local_dir=str(manual), strict_records=True)


def test_sif_local_skips_bad_records_with_a_warning(tmp_path, scenes, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    from sif_jax.data import tfds_sif
    from sif_jax.data.traces import build_trace

    manual = tmp_path / "manual"
    records = []
    for sc in scenes[:3]:
        q = generate_questions(sc, 0, families=("relation", "count"))[0]
        records.append(record_from_scene(sc, q, build_trace(sc, q, 0), manual / "images"))
    records[1].boxes = [[0.6, 0.1, 0.6, 0.3]]  # zero width
    records[1].id = "bad-one"
    write_sif_json(records, manual / "sif.json")
    warnings = []
    monkeypatch.setattr(tfds_sif.logging, "warning", lambda msg, *args: warnings.append(msg % args))
    tfds_sif.build(tmp_path / "data", local_dir=str(manual))
    src = tfds.data_source("sif_local", split="train", data_dir=str(tmp_path / "data"), download=False)
    assert sorted(tfds_sif.decode_example(src[i])["id"] for i in range(len(src))) == sorted(
        [records[0].id, records[2].id])
    assert len(warnings) == 1 and "skipped 1 invalid records (ids: bad-one)" in warnings[0]
    assert "x2 <= x1" in warnings[0]


def test_builds_of_any_size_and_file_name_open_through_the_source_registry(tmp_path, scenes):
    pytest.importorskip("tensorflow_datasets")
    from sif_jax.data import sources, tfds_sif
    from sif_jax.data.traces import build_trace

    tiny = tfds_sif.build(tmp_path / "data", "tiny")
    records = []
    for sc in scenes[:3]:
        q = generate_questions(sc, 0, families=("relation",))[0]
        records.append(record_from_scene(sc, q, build_trace(sc, q, 0), tmp_path / "manual" / "images"))
    write_sif_json(records, tmp_path / "manual" / "my_records.json")  # any name
    tfds_sif.build(tmp_path / "local", local_dir=str(tmp_path / "manual" / "my_records.json"))
    # the path as the builder printed it, the data_dir, or the data_dir plus the build name
    for spec in (f"tfds:{tiny.data_dir}", f"tfds:{tmp_path / 'data'}", f"tfds:{tmp_path / 'data'}:sif_spatial/tiny"):
        assert len(sources.tfds_source(spec, "train")) == 32 and len(sources.tfds_source(spec, "test")) == 8
    local = sources.tfds_source(f"tfds:{tmp_path / 'local'}", "train")
    assert len(local) == 3 and local[0]["boxes"].shape[1] == 4
    with pytest.raises(FileNotFoundError, match=r"give a SIF-50K JSON file, or a directory holding sif.json"):
        tfds_sif.build(tmp_path / "x", local_dir=str(tmp_path))
