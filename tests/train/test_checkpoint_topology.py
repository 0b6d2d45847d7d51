"""Checkpoints and exports load on any device count and mesh, bit-equal (simulated CPU devices,
one subprocess per topology: the device count is fixed when JAX starts)."""

import json
import os
import shutil
import sys

import pytest

from tests.conftest import run_simulated

from .conftest import ROOT

SCRIPT = os.path.join(os.path.dirname(__file__), "topology_checkpoint.py")


def _run(mode: str, out: str, mesh: str, devices: int) -> dict:
    def start_over():  # a save that XLA aborted midway is redone from an empty folder
        if mode == "save":
            shutil.rmtree(out)
            os.makedirs(out)

    result = run_simulated([sys.executable, SCRIPT, mode, out, mesh], devices, before_retry=start_over, cwd=ROOT,
                           timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == devices
    return report


@pytest.fixture(scope="module")
def saved_on_8(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("saved_on_8"))
    report = _run("save", out, "1,8,1", 8)
    assert report["sharded_leaves"] > 0  # fsdp really split arrays over the 8 devices
    return out


ALL = ["run", "sft", "grpo", "run", "params", "params", "init_checkpoint"]


def test_8_device_fsdp_checkpoint_loads_on_one_device(saved_on_8):
    assert _run("load", saved_on_8, "1,1,1", 1)["checked"] == ALL


def test_8_device_checkpoint_loads_on_another_8_device_mesh(saved_on_8):
    assert _run("load", saved_on_8, "2,2,2", 8)["checked"] == ALL


def test_1_device_checkpoint_loads_on_a_2x2x2_mesh(tmp_path):
    _run("save", str(tmp_path), "1,1,1", 1)
    assert _run("load", str(tmp_path), "2,2,2", 8)["checked"] == ALL
