import os

import numpy as np
import pytest

from tests.conftest import FIXTURES

HF_TINY_LLAVA = os.path.join(FIXTURES, "hf_tiny_llava")


@pytest.fixture(scope="session")
def llava_dir() -> str:
    return HF_TINY_LLAVA


@pytest.fixture(scope="session")
def llava_io() -> dict[str, np.ndarray]:
    with np.load(os.path.join(HF_TINY_LLAVA, "io.npz")) as data:
        return dict(data)


@pytest.fixture(scope="session")
def llava_loaded(llava_dir):
    from sif_jax.model import family

    return family.load_hf_checkpoint(llava_dir)
