"""Ahead-of-time compiles for real TPU targets from this CPU host (libtpu, no TPU, no interpreter)."""

from __future__ import annotations

import functools
import os

import pytest


@functools.cache
def topology(name: str):
    """`get_topology_desc` for a Cloud TPU topology name such as "v5p:2x2x1"; cached per process."""
    from jax.experimental import topologies

    return topologies.get_topology_desc(platform="tpu", topology_name=name)


def _libtpu_available() -> bool:
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(autouse=True)
def _need_libtpu():
    if not _libtpu_available():
        if os.environ.get("CI"):
            pytest.fail("libtpu is not installed: CI must run the TPU ahead-of-time tests (pip install -e '.[test]')")
        pytest.skip("libtpu is not installed (pip install 'jax[tpu]')")
