"""Readers of run directories take only the steps orbax finished (a preempted save is skipped)."""

import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.path import atomicity, atomicity_defaults

from sif_jax import checkpoint_loading
from sif_jax.checkpoint import Checkpointer, finalized_steps, latest_run_checkpoint, run_checkpoint_meta
from sif_jax.model.config import get_preset


def _save(directory: str, steps: list[int]) -> None:
    meta = {"model": get_preset("tiny").to_hf_config(), "dtype": "float32", "tokenizer": ""}
    ckpt = Checkpointer(directory, every=1, max_to_keep=10)
    for step in steps:
        ckpt.save(step, {"params": {"w": jnp.full((2,), float(step))}}, {**meta, "step": step}, force=True)
    ckpt.close()


@pytest.fixture
def commit_file_mode(monkeypatch):
    """Local directories treated as gs:// ones are: a step is finished when it holds commit_success.txt
    (a preempted save leaves `<step>/` without it), not when it is renamed from a tmp name."""
    monkeypatch.setattr(atomicity_defaults, "get_default_temporary_path_class",
                        lambda path, **kw: atomicity.CommitFileTemporaryPath)


def test_unfinished_gcs_style_step_is_ignored(tmp_path, commit_file_mode):
    run = str(tmp_path / "run")
    _save(os.path.join(run, "grpo"), [1, 2])
    assert os.path.exists(os.path.join(run, "grpo", "2", "commit_success.txt"))
    # step 9 was being written when the job was preempted: everything but the commit marker
    shutil.copytree(os.path.join(run, "grpo", "2"), os.path.join(run, "grpo", "9"))
    os.remove(os.path.join(run, "grpo", "9", "commit_success.txt"))
    assert finalized_steps(os.path.join(run, "grpo")) == [1, 2]
    assert latest_run_checkpoint(run) == (os.path.join(run, "grpo"), 2)
    assert run_checkpoint_meta(run)[1]["step"] == 2
    info = checkpoint_loading.read_checkpoint_info(run)
    assert (info.step, info.location) == (2, os.path.join(run, "grpo", "2"))


def test_unfinished_tmp_step_is_ignored(tmp_path):
    run = str(tmp_path / "run")
    _save(os.path.join(run, "grpo"), [3])
    shutil.copytree(os.path.join(run, "grpo", "3"), os.path.join(run, "grpo", "7.orbax-checkpoint-tmp-1234567"))
    assert finalized_steps(os.path.join(run, "grpo")) == [3]
    assert latest_run_checkpoint(run) == (os.path.join(run, "grpo"), 3)


def test_phase_with_only_an_unfinished_step_falls_back_to_sft(tmp_path, commit_file_mode):
    run = str(tmp_path / "run")
    _save(os.path.join(run, "sft"), [4])
    _save(os.path.join(run, "grpo"), [5])
    os.remove(os.path.join(run, "grpo", "5", "commit_success.txt"))
    assert latest_run_checkpoint(run) == (os.path.join(run, "sft"), 4)
    from sif_jax.checkpoint import load_run_params

    _, params, meta = load_run_params(run)
    assert meta["step"] == 4
    np.testing.assert_array_equal(np.asarray(params["w"]), [4.0, 4.0])


def test_no_finished_step_is_an_error(tmp_path, commit_file_mode):
    run = str(tmp_path / "run")
    _save(os.path.join(run, "grpo"), [1])
    os.remove(os.path.join(run, "grpo", "1", "commit_success.txt"))
    with pytest.raises(FileNotFoundError, match="holds no sif_jax checkpoint"):
        latest_run_checkpoint(run)
    os.makedirs(os.path.join(run, "sft", "12"))  # an empty all-digit directory is not a step either
    with pytest.raises(FileNotFoundError, match="holds no sif_jax checkpoint"):
        latest_run_checkpoint(run)
