"""Sharded training on simulated CPU devices and across two processes."""

import functools
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import run_simulated

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _env(**extra):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


@functools.cache  # the one-device base is shared by both tests (one xdist worker runs this whole file)
def _sharded_loss(mesh: str, backend: str = "reference") -> dict:
    # One process per mesh: XLA's CPU all-reduce aborts when one process runs programs on
    # several meshes over the same simulated devices.
    script = os.path.join(os.path.dirname(__file__), "sharded_loss.py")
    out = run_simulated([sys.executable, script, mesh, f"--backend={backend}"], 8, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])[mesh]


def test_meshes_give_the_single_device_loss():
    results = {mesh: _sharded_loss(mesh) for mesh in ("1,1,1", "8,1,1", "2,4,1", "2,2,2")}
    base = results.pop("1,1,1")
    assert base["devices"] == 1
    for mesh, r in results.items():
        assert r["devices"] == 8
        np.testing.assert_allclose(r["loss"], base["loss"], rtol=1e-5, err_msg=mesh)
        np.testing.assert_allclose(r["grad_norm"], base["grad_norm"], rtol=1e-4, err_msg=mesh)
    # fsdp / tensor meshes really shard parameters
    assert results["2,4,1"]["sharded_param_leaves"] > 0 and results["2,2,2"]["sharded_param_leaves"] > 0


@pytest.mark.slow
def test_shard_mapped_kernel_gives_the_single_device_loss():
    """The Pallas kernel path (per-shard kernel in a shard_map, interpreted on the CPU) on a
    (data=2, fsdp=2, tensor=2) mesh equals the one-device reference loss and gradient."""
    base = _sharded_loss("1,1,1")
    sharded = _sharded_loss("2,2,2", backend="pallas_tpu")
    assert sharded["devices"] == 8 and sharded["pallas_calls"] > 0
    assert sharded["shard_maps"] > 0  # every attention layer's kernel runs per shard
    np.testing.assert_allclose(sharded["loss"], base["loss"], rtol=1e-5)
    np.testing.assert_allclose(sharded["grad_norm"], base["grad_norm"], rtol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_two_steps(tmp_path):
    """jax.distributed over gloo on localhost: two processes, one CPU device each, one mesh."""
    port = _free_port()
    procs = []
    for pid in range(2):
        args = [sys.executable, "-m", "sif_jax.train", "--config=configs/grpo.py",
                f"--config.workdir={tmp_path / 'run'}", "--config.data.image_size=112",
                "--config.data.length_buckets=(128,384)", "--config.data.patch_buckets=(64,)",
                "--config.data.eval_examples=0", "--config.sft.steps=0", "--config.grpo.steps=2",
                "--config.grpo.prompts_per_step=2", "--config.grpo.micro_batch_prompts=2",
                "--config.grpo.group_size=2", "--config.grpo.max_new_tokens=4", "--config.checkpoint_every=1",
                f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                "--config.distributed.num_processes=2", f"--config.distributed.process_id={pid}"]
        env = _env(JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
        procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2]  # written by process 0 only
    assert all(np.isfinite(r["loss"]) for r in rows)
