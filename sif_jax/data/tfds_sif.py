"""TFDS builders: `sif_spatial` (procedural scenes) and `sif_local` (SIF-50K JSON on disk).

Both write **array_record** files and are read back with `tfds.data_source` (random access, what
grain wants) — without TensorFlow. What makes that work on tensorflow-datasets 4.9.x:

* images are yielded as already-encoded PNG bytes (`tfds.features.Image(encoding_format="png")`);
  a NumPy image would be encoded through TF. On read, TFDS decodes uint8 PNGs with PIL;
* the 16-bit depth map is stored as PNG bytes in a `Tensor(dtype=object)` feature and decoded
  here with PIL (`decode_example`): TFDS's uint16 Image decoder needs OpenCV, which we do not
  depend on;
* `DatasetInfo` is built directly (not `dataset_info_from_configs`, which looks for metadata
  files beside the builder's module);
* the builders pin `code_path` to their source file: TFDS 4.9.10's own `code_path` evaluates
  `importlib_resources.abc.Traversable` for any builder defined in an installed package, and
  `importlib_resources` is only a TFDS dependency on Python < 3.9, so building from an imported
  module (not `python -m`) fails with ModuleNotFoundError without this.

Build from the command line::

    python -m sif_jax.data.tfds_sif --size=small --data_dir=DIR
    python -m sif_jax.data.tfds_sif --local=SIF-50K.json --data_dir=DIR [--strict_records]
    python -m sif_jax.data.tfds_sif --local=DIR_WITH_sif.json --data_dir=DIR

(`sif_local` leaves out invalid records with a warning giving their count and first ids;
`--strict_records` fails on the first build instead.)

and read::

    source = tfds.data_source("sif_spatial/small", split="train", data_dir=DIR, download=False)
    example = decode_example(source[0])
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from sif_jax.data.image import load_image
from sif_jax.data.questions import sample_question
from sif_jax.data.records import load_depth_png, read_sif_json, usable_records
from sif_jax.data.scenes import SceneConfig, generate_scene
from sif_jax.data.traces import build_trace

# Test-split scene seeds start here, so train and test scenes never coincide.
TEST_SEED_OFFSET = 1_000_000_000


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 [H, W, 3] or uint16 [H, W] -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def depth_png_bytes(depth: np.ndarray) -> bytes:
    """float [H, W] in [0, 1] -> 16-bit PNG bytes (value * 65535)."""
    return png_bytes(np.round(np.clip(depth, 0.0, 1.0) * 65535.0).astype(np.uint16))


def decode_depth(data: bytes) -> np.ndarray:
    """16-bit PNG bytes -> float32 [H, W] in [0, 1]."""
    return load_depth_png(io.BytesIO(data))


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes (PNG/JPEG/...) -> uint8 [H, W, 3] (`image.load_image`: EXIF orientation,
    transparency on white, 16-bit scaled)."""
    return load_image(data)


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def decode_example(example: dict[str, Any]) -> dict[str, Any]:
    """A record from `tfds.data_source` -> plain Python/NumPy: text fields as str, choices as a
    list of str, `depth` float32 [H, W] from `depth_png`, `image` uint8 [H, W, 3] (decoded from
    `image_bytes` for `sif_local`), `messages` parsed from `messages_json`."""
    out: dict[str, Any] = {}
    for key, value in example.items():
        if key == "depth_png":
            out["depth"] = decode_depth(value) if len(value) else None
        elif key == "image_bytes":
            out["image"] = decode_image(value)
        elif key == "messages_json":
            out["messages"] = json.loads(_text(value))
        elif key == "choices":
            out[key] = [_text(c) for c in value]
        elif isinstance(value, bytes):
            out[key] = _text(value)
        else:
            out[key] = value
    return out


class _SourceFileCodePath:
    """Mixin: `code_path` is the defining source file (see the module docstring for why)."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path | None:
        try:
            return epath.Path(inspect.getfile(cls))
        except (TypeError, OSError):
            return None


@dataclasses.dataclass
class SifSpatialConfig(tfds.core.BuilderConfig):
    """How many scenes each split has, and their size in pixels."""

    num_train: int = 2000
    num_test: int = 256
    image_size: int = 224


SIZES: dict[str, tuple[int, int]] = {
    "tiny": (32, 8),
    "small": (2_000, 256),
    "medium": (20_000, 1_000),
    "large": (100_000, 5_000),
}


class SifSpatial(_SourceFileCodePath, tfds.core.GeneratorBasedBuilder):
    """Procedural spatial scenes, one question + ground-truth trace per scene."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Scenes, four question families, reverse-expansion traces."}
    BUILDER_CONFIGS = [
        SifSpatialConfig(name=name, num_train=tr, num_test=te,
                         description=f"{tr} train / {te} test scenes at 224x224")
        for name, (tr, te) in SIZES.items()
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Procedural ground-plane scenes with exact visible boxes and depth, "
                        "spatial questions and SIFThinker-style traces.",
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "scene_seed": tfds.features.Scalar(dtype=np.int64),
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "depth_png": tfds.features.Tensor(shape=(), dtype=np.object_),
                "problem": tfds.features.Text(),
                "answer": tfds.features.Text(),
                "choices": tfds.features.Sequence(tfds.features.Text()),
                "family": tfds.features.Text(),
                "relation": tfds.features.Text(),
                "split": tfds.features.Text(),
                "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                "box_depths": tfds.features.Tensor(shape=(None,), dtype=np.float32),
                "trace": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict]]]:
        cfg = self.builder_config
        return {
            "train": self._generate_examples(range(cfg.num_train)),
            "test": self._generate_examples(
                range(TEST_SEED_OFFSET, TEST_SEED_OFFSET + cfg.num_test)),
        }

    def _generate_examples(self, seeds: Sequence[int]) -> Iterator[tuple[str, dict]]:
        size = self.builder_config.image_size
        config = SceneConfig(height=size, width=size)
        for seed in seeds:
            yield str(seed), scene_example(int(seed), config)


def scene_example(seed: int, config: SceneConfig | None = None) -> dict[str, Any]:
    """The `sif_spatial` example for scene `seed` (also usable without TFDS)."""
    scene = generate_scene(seed, config)
    q = sample_question(scene, seed)
    trace = build_trace(scene, q, seed)
    return {
        "id": q.id,
        "scene_seed": seed,
        "image": png_bytes(scene.image),
        "depth_png": depth_png_bytes(scene.depth),
        "problem": q.text,
        "answer": q.answer,
        "choices": list(q.choices or []),
        "family": q.family,
        "relation": q.relation or "",
        "split": q.split,
        "boxes": np.asarray(q.target_boxes, np.float32).reshape(-1, 4),
        "box_depths": np.asarray([scene.objects[i].depth for i in q.target_indices], np.float32),
        "trace": trace.text,
    }


class SifLocal(_SourceFileCodePath, tfds.core.GeneratorBasedBuilder):
    """Local SIF-format data: `sif.json` (train) and optionally `sif_test.json` in manual_dir."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "SIF-50K JSON + images from a local directory."}
    strict_records = False  # True: one invalid record fails the build; False: skipped with a warning
    train_file = "sif.json"  # in manual_dir (`build(local_dir=<file>)` sets another name)
    test_file = "sif_test.json"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place sif.json (SIF-50K format: a list of records) and optionally sif_test.json in "
        "manual_dir; relative image paths are taken from manual_dir."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="SIF-format records from local files (images stored as file bytes).",
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "image_bytes": tfds.features.Tensor(shape=(), dtype=np.object_),
                "depth_png": tfds.features.Tensor(shape=(), dtype=np.object_),
                "problem": tfds.features.Text(),
                "answer": tfds.features.Text(),
                "choices": tfds.features.Sequence(tfds.features.Text()),
                "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                "messages_json": tfds.features.Text(),
                "source": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict]]]:
        root = os.fspath(dl_manager.manual_dir)
        splits = {"train": os.path.join(root, self.train_file)}
        test = os.path.join(root, self.test_file)
        if os.path.exists(test):
            splits["test"] = test
        return {name: self._generate_examples(path) for name, path in splits.items()}

    def _generate_examples(self, path: str) -> Iterator[tuple[str, dict]]:
        records = read_sif_json(path, image_root=os.path.dirname(path))
        # strict: fail before writing anything, naming record and field; else skip and count
        records, skipped = usable_records(records, strict=self.strict_records)
        if skipped.count:
            logging.warning("%s: %s", path, skipped.summary("records"))
        for i, r in enumerate(records):
            with open(r.image, "rb") as f:
                image = f.read()
            depth = b""
            if r.depth_image:
                with open(r.depth_image, "rb") as f:
                    depth = f.read()
            yield f"{i}:{r.id}", {
                "id": r.id,
                "image_bytes": image,
                "depth_png": depth,
                "problem": r.problem,
                "answer": r.response,
                "choices": list(r.choices or []),
                "boxes": np.asarray(r.boxes, np.float32).reshape(-1, 4),
                "messages_json": json.dumps(r.messages),
                "source": r.source,
            }


def build(
    data_dir: str | os.PathLike, size: str = "small", local_dir: str | None = None, *, strict_records: bool = False
) -> tfds.core.DatasetBuilder:
    """Builds `sif_spatial/<size>` (or `sif_local` from `local_dir`) as array_record files.

    `sif_local`: a record with a problem (`records.record_errors`) is left out of the dataset and
    the count and first ids are logged as a warning; `strict_records` raises instead (a
    ValueError listing every problem, before anything is written).
    """
    if local_dir is not None:
        builder: tfds.core.DatasetBuilder = SifLocal(data_dir=os.fspath(data_dir))
        builder.strict_records = strict_records
        if os.path.isfile(local_dir):  # a SIF-50K file of any name: it is the train split
            local_dir, builder.train_file = os.path.split(os.path.abspath(local_dir))
            builder.test_file = os.path.splitext(builder.train_file)[0] + "_test.json"
        elif not os.path.isfile(os.path.join(local_dir, "sif.json")):
            raise FileNotFoundError(f"--local={local_dir!r}: give a SIF-50K JSON file, or a directory holding sif.json")
        download_config = tfds.download.DownloadConfig(manual_dir=local_dir)
    else:
        if size not in SIZES:
            raise ValueError(f"size={size!r}: expected one of {sorted(SIZES)}")
        builder = SifSpatial(config=size, data_dir=os.fspath(data_dir))
        download_config = tfds.download.DownloadConfig()
    builder.download_and_prepare(file_format="array_record", download_config=download_config)
    return builder


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the sif_spatial / sif_local datasets.")
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--local", default=None,
                        help="sif_local: a SIF-50K JSON file (any name; <name>_test.json beside it is the test "
                             "split) or a directory holding sif.json (and sif_test.json)")
    parser.add_argument("--strict_records", action="store_true",
                        help="sif_local: fail on any invalid record instead of skipping it with a warning")
    args = parser.parse_args(argv)
    builder = build(args.data_dir, args.size, args.local, strict_records=args.strict_records)
    print(f"built {builder.info.full_name} in {builder.data_dir}: "
          + ", ".join(f"{k}={v.num_examples}" for k, v in builder.info.splits.items()))
    print(f"train on it with --config.data.source=tfds:{args.data_dir}:{builder.info.full_name.rsplit('/', 1)[0]}")


if __name__ == "__main__":
    main()
