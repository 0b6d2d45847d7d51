"""Session fixtures for the command-line tests: a tiny trained run directory (2 SFT steps on
112 px scenes, ~20 s), scene images, and small VSR / WhatsUp files pointing at them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from sif_jax.data.pipeline import BuiltinSource
from sif_jax.data.scenes import SceneConfig
from tests.train.conftest import tiny_run_config

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
IMAGE_SIZE = 112


def run_cli(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m sif_jax.<module> args...` from the repository root."""
    return subprocess.run([sys.executable, "-m", f"sif_jax.{module}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def run_many(calls: list[tuple[str, list[str]]], workers: int = 4) -> list[subprocess.CompletedProcess]:
    """Several `run_cli` calls at once (they mostly wait on imports and compilation)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda call: run_cli(call[0], *call[1]), calls))


def eval_args(checkpoint: str, *extra: str) -> list[str]:
    """A fast evaluation: 112 px scenes, 8 new tokens."""
    return ["--config=configs/eval.py", f"--config.checkpoint={checkpoint}", f"--config.data.image_size={IMAGE_SIZE}",
            "--config.max_new_tokens=8", "--config.data.length_buckets=(192, 256)", *extra]


@pytest.fixture(scope="session")
def cli_files(tmp_path_factory):
    """{run, images: [png paths], vsr, whatsup, image_dir, root}."""
    from sif_jax import train

    root = tmp_path_factory.mktemp("cli")
    c = tiny_run_config(str(root / "run"))
    c.sft.steps = 2
    c.sft.batch_size = 2
    c.grpo.steps = 0
    train.run(c)
    image_dir = root / "images"
    image_dir.mkdir()
    source = BuiltinSource(seed=0, size=3, split="test", scene_config=SceneConfig(IMAGE_SIZE, IMAGE_SIZE))
    images = []
    for i in range(3):
        path = image_dir / f"scene{i}.png"
        Image.fromarray(source[i]["image"]).save(path)
        images.append(str(path))
    vsr = root / "vsr.jsonl"
    vsr.write_text("\n".join(json.dumps(r) for r in [
        {"image": "scene0.png", "caption": "The cube is left of the sphere.", "label": 1, "relation": "left of"},
        {"image": "scene1.png", "caption": "The cube is behind the cone.", "label": 0, "relation": "behind"},
        {"image": "scene2.png", "caption": "The cone is above the cube.", "label": 1, "relation": "above"},
    ]) + "\n")
    whatsup = root / "whatsup.json"
    whatsup.write_text(json.dumps([
        {"image_path": "scene0.png", "caption_options": ["A cube to the left of a sphere",
                                                         "A cube to the right of a sphere", "A cube under a sphere"]},
        {"image_path": "scene1.png", "caption_options": ["A cone behind a cube", "A cone in front of a cube"]},
    ]))
    return {"root": str(root), "run": str(root / "run"), "images": images, "image_dir": str(image_dir),
            "vsr": str(vsr), "whatsup": str(whatsup)}
