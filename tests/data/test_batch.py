"""The typed batch: fields declare their batch axes, sharding reads them, host lists stay on the host."""

import dataclasses
import subprocess
import sys

import jax
import numpy as np
import pytest

from sif_jax import parallel
from sif_jax.batch import Batch, ModelInputs, RewardTargets, batch_axis
from sif_jax.rl.types import Rollout

R, L = 4, 6


def _targets(n=R):
    return RewardTargets(answers=["a"] * n, choices=[None] * n, target_boxes=[np.zeros((0, 4), np.float32)] * n,
                         depth_maps=[None] * n, prompt_ids=[str(i) for i in range(n)], metadata=[{}] * n)


def _batch():
    rng = np.random.default_rng(0)
    inputs = ModelInputs(input_ids=rng.integers(0, 9, (R, L)).astype(np.int32),
                         attention_mask=np.ones((R, L), np.int32),
                         positions=np.broadcast_to(np.arange(L, dtype=np.int32), (3, R, L)).copy(),
                         image_grid_thw=np.array([[1, 2, 2]] * R, np.int64))
    return Batch(inputs, region_mask=np.zeros((R, L), bool), region_tokens=np.zeros(R, np.int32),
                 visual_tokens=np.ones(R, np.int32), targets=_targets())


def test_every_array_field_declares_its_batch_axis():
    assert batch_axis(ModelInputs, "positions") == 1  # [position_axes, R, L]
    assert batch_axis(ModelInputs, "input_ids") == 0 and batch_axis(ModelInputs, "image_grid_thw") is None
    assert batch_axis(Batch, "loss_mask") == 0
    for cls in (ModelInputs, Batch):
        for f in dataclasses.fields(cls):
            assert f.name == "inputs" or "batch_axis" in f.metadata or not f.metadata.get("pytree_node", True), f.name
    with pytest.raises(KeyError, match="ModelInputs has no field 'labels'"):
        batch_axis(ModelInputs, "labels")


def test_from_arrays_names_an_unknown_array():
    with pytest.raises(ValueError, match=r"unknown arrays \['labels'\]"):
        ModelInputs.from_arrays({"input_ids": np.zeros((1, 2), np.int32), "labels": np.zeros(2)})
    inputs = ModelInputs.from_arrays({"input_ids": np.zeros((1, 2), np.int32)})
    assert list(inputs.arrays()) == ["input_ids"] and inputs.rows == 1


def test_reward_targets_check_their_lengths():
    with pytest.raises(ValueError, match="RewardTargets.prompt_ids has 2 items; answers has 3"):
        dataclasses.replace(_targets(3), prompt_ids=["a", "b"])


def test_shard_batch_places_the_arrays_and_leaves_the_host_lists():
    batch = _batch()
    mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    placed = parallel.shard_batch(batch, mesh)
    assert isinstance(placed, Batch) and isinstance(placed.inputs, ModelInputs)
    assert placed.targets is batch.targets and placed.loss_mask is None and placed.inputs.pixel_values is None
    for name, value in placed.inputs.items():
        assert isinstance(value, jax.Array), name
        np.testing.assert_array_equal(np.asarray(value), getattr(batch.inputs, name))
    assert isinstance(placed.region_mask, jax.Array)


def test_a_rollout_cannot_change_after_construction():
    r = Rollout.create({}, np.zeros((2, 3), np.int32), np.ones((2, 3), bool), np.zeros((2, 3)), None, np.zeros(2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.advantages = np.ones(2)


def test_the_data_package_imports_no_model_module():
    """Only the configs and the family registry (which imports a family on first use)."""
    code = ("import sys; import sif_jax.data.batching, sif_jax.data.pipeline, sif_jax.data.sources; "
            "print(sorted(m for m in sys.modules if m.startswith('sif_jax.model')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['sif_jax.model', 'sif_jax.model.config', 'sif_jax.model.family']", out
