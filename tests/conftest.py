"""Shared test helpers."""

import os

import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
HF_TINY = os.path.join(FIXTURES, "hf_tiny_qwen2_5_vl")


@pytest.fixture(scope="session")
def hf_tiny_dir() -> str:
    return HF_TINY


@pytest.fixture(scope="session")
def hf_tiny_io() -> dict[str, np.ndarray]:
    with np.load(os.path.join(HF_TINY, "io.npz")) as data:
        return dict(data)
