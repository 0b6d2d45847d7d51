"""Fixtures of the Qwen3-VL tests (written by make_hf_fixture.py)."""

import os

import numpy as np
import pytest

from sif_jax.model.qwen3_vl.convert import load_hf_checkpoint

HF_TINY_QWEN3_VL = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "hf_tiny_qwen3_vl")


@pytest.fixture(scope="session")
def qwen3_dir() -> str:
    return HF_TINY_QWEN3_VL


@pytest.fixture(scope="session")
def qwen3_io() -> dict[str, np.ndarray]:
    with np.load(os.path.join(HF_TINY_QWEN3_VL, "io.npz")) as data:
        return dict(data)


@pytest.fixture(scope="session")
def qwen3_loaded(qwen3_dir):
    return load_hf_checkpoint(qwen3_dir)
