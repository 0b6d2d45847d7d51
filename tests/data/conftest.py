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
