"""benchmarks/memorise_images.py runs and reports both image variants (a smoke test at 112 px)."""

from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location("memorise_images",
                                                  os.path.join(ROOT, "benchmarks", "memorise_images.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memorise_smoke():
    rows = _script().main(["--images=2", "--steps=2", "--every=1", "--image_size=112"])
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["own"] <= 1.0 and 0.0 <= r["swapped"] <= 1.0 and r["loss"] > 0 for r in rows)


def test_needs_two_images():
    with pytest.raises(SystemExit):
        _script().main(["--images=1"])
