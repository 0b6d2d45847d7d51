"""Shared test helpers."""

import os

# The tests run on the CPU (simulated devices where they need several). libtpu, installed for the
# ahead-of-time TPU compile tests, is only ever used through `get_topology_desc`; several test
# processes may load it at once.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Simulated multi-device CPU runs: XLA aborts a collective whose participants (threads) do not all
# arrive within 40 s, which a loaded 2-core machine can exceed; wait longer instead.
PATIENT_COLLECTIVES = "--xla_cpu_collective_call_terminate_timeout_seconds=600"

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
HF_TINY = os.path.join(FIXTURES, "hf_tiny_qwen2_5_vl")


@pytest.fixture(scope="session")
def hf_tiny_dir() -> str:
    return HF_TINY


@pytest.fixture(scope="session")
def hf_tiny_io() -> dict[str, np.ndarray]:
    with np.load(os.path.join(HF_TINY, "io.npz")) as data:
        return dict(data)
