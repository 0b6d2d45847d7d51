"""A LoRA rank-8 run of the default task (SFT warm-up, then GRPO) on CPU: adapter-only optimizer
state, the base as the KL reference, checkpoints that hold the adapters, merged HF export equal to
the unmerged model, PEFT export, and continuing from a PEFT adapter."""

from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sif_jax import train
from sif_jax.checkpoint import latest_run_checkpoint, load_run_adapters, load_run_params
from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.export import export
from sif_jax.lora import LoraConfig, adapter_specs, flatten
from sif_jax.lora_peft import load_peft_adapter
from sif_jax.model.config import get_preset
from sif_jax.model.vlm import Qwen25VL, _dummy_inputs, abstract_boxed_params
from tests.train.conftest import tiny_run_config

RANK = 8


def lora_config(workdir: str):
    c = tiny_run_config(workdir)
    c.sft.steps = 2
    c.sft.batch_size = 2
    c.grpo.steps = 2
    c.lora.rank = RANK
    c.lora.alpha = 16.0
    c.lora.dropout = 0.05
    return c


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    c = lora_config(str(root / "run"))
    summary = train.run(c)
    return c, str(root / "run"), summary


def rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_lora_sft_and_grpo_run_with_the_base_as_reference(lora_run):
    c, run_dir, summary = lora_run
    sft = rows(f"{run_dir}/sft_metrics.jsonl")
    grpo = rows(f"{run_dir}/metrics.jsonl")
    assert len(sft) == 2 and all(math.isfinite(r["sft_loss"]) for r in sft)
    assert len(grpo) == 2 and len(summary["grpo_reward_curve"]) == 2
    # fresh adapters have B = 0: the first GRPO policy is exactly the reference (its base)
    assert grpo[0]["kl_mean"] == 0.0
    assert grpo[1]["kl_mean"] > 0.0 and grpo[0]["grad_norm"] > 0


def test_checkpoint_holds_adapters_their_moments_and_the_base_but_no_reference(lora_run):
    _, run_dir, _ = lora_run
    directory, step = latest_run_checkpoint(run_dir)
    manager = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                    item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                   "meta": ocp.JsonCheckpointHandler()},
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    try:
        saved = manager.item_metadata(step)["state"]
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    finally:
        manager.close()
    model = get_preset("tiny")
    assert not jax.tree.leaves(saved.get("ref_params"))  # no reference copy
    n_adapters = 7 * model.text.num_layers
    adapter_sizes = sorted(math.prod(x.shape) for x in jax.tree.leaves(saved["params"]))
    assert len(adapter_sizes) == 2 * n_adapters
    opt_sizes = sorted(math.prod(x.shape) for x in jax.tree.leaves(saved["opt_state"]) if len(x.shape))
    assert opt_sizes == sorted(adapter_sizes * 2)  # Adam's two moments, of the adapters only
    base_count = sum(math.prod(x.shape) for x in jax.tree.leaves(saved["base"]))
    specs = adapter_specs(abstract_boxed_params(model), LoraConfig(RANK, 16.0))
    assert sum(adapter_sizes) == sum(math.prod(s) for spec in specs.values() for s in spec.factor_shapes(RANK))
    assert sum(adapter_sizes) < 0.15 * base_count  # tiny preset: hidden 64, so r=8 is relatively large
    assert meta["lora"]["rank"] == RANK and meta["lora"]["alpha"] == 16.0
    assert meta["lora"]["base"].startswith("sft phase")


def lora_interceptor(adapters, scale):
    """Runs every adapted DenseGeneral unmerged: y = x W + b + scale * (x A) B."""
    flat = flatten(adapters)

    def interceptor(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        path = "/".join(context.module.path) + "/kernel"
        if context.method_name != "__call__" or path not in flat:
            return y
        a, b = flat[path]["a"], flat[path]["b"]
        n_in = a.ndim - 1
        x = args[0]
        xa = jnp.tensordot(x, a, axes=(tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))),
                           precision=jax.lax.Precision.HIGHEST)
        return y + scale * jnp.tensordot(xa, b, axes=1, precision=jax.lax.Precision.HIGHEST).astype(y.dtype)

    return interceptor


def test_merged_hf_export_gives_the_unmerged_models_logits(lora_run, tmp_path):
    _, run_dir, _ = lora_run
    config, merged, meta = load_run_params(run_dir)
    _, adapters, _ = load_run_adapters(run_dir)
    out = str(tmp_path / "hf")
    export(run_dir, "hf", out)
    _, exported = load_hf_checkpoint(out)
    # the unmerged model: the base plus the adapters' own branch at every adapted layer
    directory, step = latest_run_checkpoint(run_dir)
    with ocp.CheckpointManager(directory, item_names=("state", "meta"),
                               item_handlers={"state": ocp.PyTreeCheckpointHandler()},
                               options=ocp.CheckpointManagerOptions(read_only=True, create=False)) as m:
        base = m.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))["state"]["base"]
    inputs = _dummy_inputs(config)
    model = Qwen25VL(config)
    scale = meta["lora"]["alpha"] / meta["lora"]["rank"]
    with nn.intercept_methods(lora_interceptor(adapters, scale)):
        unmerged, _ = model.apply({"params": base}, **inputs)
    ours, _ = model.apply({"params": exported}, **inputs)
    plain, _ = model.apply({"params": base}, **inputs)
    assert np.abs(np.asarray(unmerged) - np.asarray(plain)).max() > 1e-4  # the adapters matter
    err = float(np.abs(np.asarray(ours) - np.asarray(unmerged)).max())
    assert err <= 1e-5, f"max |merged export - unmerged| = {err}"


def test_peft_export_reads_back_and_continues_training(lora_run, tmp_path):
    c, run_dir, _ = lora_run
    out = str(tmp_path / "adapter")
    meta = export(run_dir, "peft", out)
    assert meta["format"] == "peft" and meta["lora"]["rank"] == RANK
    _, adapters, _ = load_run_adapters(run_dir)
    lora = LoraConfig(RANK, 16.0)
    specs = adapter_specs(abstract_boxed_params(get_preset("tiny")), lora)
    back = flatten(load_peft_adapter(out, specs, lora))
    for path, ab in flatten(adapters).items():
        for k in "ab":
            np.testing.assert_array_equal(back[path][k], np.asarray(ab[k]))
    # a new run starts GRPO from the exported adapter: the policy differs from its base at step 1
    c2 = lora_config(str(tmp_path / "continue"))
    c2.sft.steps = 0
    c2.grpo.steps = 1
    c2.lora.init_adapter = out
    train.run(c2)
    first = rows(str(tmp_path / "continue" / "metrics.jsonl"))[0]
    assert first["kl_mean"] > 0.0


def test_full_fine_tuning_is_unchanged_by_default(tmp_path):
    c = tiny_run_config(str(tmp_path / "full"))
    run_, params = train._setup(c)
    optimizer = train.grpo_optimizer(c)
    shardings = train._state_shardings(run_, optimizer, reference=True)
    assert shardings.base is None and shardings.ref_params is not None
    state = train._new_state(params, optimizer, 0, shardings)
    assert state.base is None and jax.tree.structure(state.ref_params) == jax.tree.structure(params)
