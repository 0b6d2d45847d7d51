"""Saves or loads sif_jax checkpoints on a given device mesh (run in a subprocess per topology).

    python tests/train/topology_checkpoint.py save <dir> <data,fsdp,tensor>
    python tests/train/topology_checkpoint.py load <dir> <data,fsdp,tensor>

save: a tiny run's SFT (step 2) and GRPO (step 3) states, sharded on the mesh, in <dir>/run/{sft,grpo};
      a params-only export of the run (`sif_jax.export --format=orbax`) in <dir>/export; the sharded
      GRPO params as a params-only orbax pytree in <dir>/sharded_params; every param as saved in
      <dir>/{sft,grpo}.npz.
load: every way sif_jax reads those back (evaluate/generate/export loading, `init_checkpoint`),
      on this process's devices and mesh; prints one JSON line naming what was bit-equal.
"""

import json
import os
import sys

import jax
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)

from sif_jax import checkpoint_loading as loading  # noqa: E402
from sif_jax import train  # noqa: E402
from sif_jax.checkpoint import Checkpointer, load_params_dir, load_run_params  # noqa: E402
from sif_jax.optim import make_optimizer  # noqa: E402
from tests.train.conftest import tiny_run_config  # noqa: E402


def flat(params) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def same(got, want: dict[str, np.ndarray], what: str) -> None:
    got = flat(got)
    assert sorted(got) == sorted(want), f"{what}: other param names"
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, f"{what} {k}: {got[k].dtype}{got[k].shape}"
        assert np.array_equal(got[k].view(np.uint8), v.view(np.uint8)), f"{what} {k}: values differ"


def config_for(workdir: str, mesh: tuple[int, int, int]):
    c = tiny_run_config(workdir)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    return c


def _shift(params, s: float):
    return jax.tree.map(lambda x: x + s, params)


def save(out: str, mesh: tuple[int, int, int]) -> dict:
    c = config_for(os.path.join(out, "run"), mesh)
    run, params = train._setup(c)
    optimizer = make_optimizer(1e-3)
    meta = train._model_meta(run)
    for phase, step, shift in (("sft", 2, 0.0), ("grpo", 3, 0.5)):
        p = jax.jit(_shift, static_argnums=1, out_shardings=run.param_shardings)(params, shift)
        shardings = train._state_shardings(run, optimizer, reference=True)
        state = train._new_state(p, optimizer, c.seed, shardings)
        ckpt = Checkpointer(os.path.join(run.workdir, phase), every=1)
        ckpt.save(step, state, {**meta, "step": step}, force=True)
        ckpt.close()
        np.savez(os.path.join(out, f"{phase}.npz"), **flat(state.params))
        if phase == "grpo":
            import orbax.checkpoint as ocp

            sharded = [x for x in jax.tree.leaves(state.params) if len(x.sharding.device_set) > 1]
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save(os.path.join(out, "sharded_params", loading.PARAMS_DIR), state.params)
                ckptr.wait_until_finished()
            with open(os.path.join(out, "sharded_params", loading.EXPORT_META), "w") as f:
                json.dump({"model": meta["model"], "dtype": meta["dtype"], "tokenizer": "builtin"}, f)
    from sif_jax.export import export

    export(run.workdir, "orbax", os.path.join(out, "export"))
    return {"devices": jax.device_count(), "sharded_leaves": len(sharded)}


def load(out: str, mesh: tuple[int, int, int]) -> dict:
    want = {p: dict(np.load(os.path.join(out, f"{p}.npz"))) for p in ("sft", "grpo")}
    run_dir = os.path.join(out, "run")
    checked = []
    _, params, meta = load_run_params(run_dir)  # evaluate / generate / export: one device
    same(params, want["grpo"], "load_run_params(run)")
    assert meta["step"] == 3
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(params))
    _, params, _ = load_run_params(os.path.join(run_dir, "sft"))
    same(params, want["sft"], "load_run_params(run/sft)")
    _, params, _ = load_run_params(os.path.join(run_dir, "grpo"))
    same(params, want["grpo"], "load_run_params(run/grpo)")
    checked += ["run", "sft", "grpo"]
    for path in (run_dir, os.path.join(out, "export"), os.path.join(out, "sharded_params")):
        same(loading.load_params(loading.read_checkpoint_info(path)), want["grpo"], f"loading.load_params({path})")
        checked.append(loading.checkpoint_kind(path))
    same(load_params_dir(os.path.join(out, "sharded_params", loading.PARAMS_DIR)), want["grpo"], "load_params_dir")

    # onto this process's mesh, as `--config.init_checkpoint=<run dir>` does
    c = config_for(os.path.join(out, "follow_up"), mesh)
    c.init_checkpoint = run_dir
    run, params = train._setup(c)
    same(params, want["grpo"], "init_checkpoint")
    for x, sh in zip(jax.tree.leaves(params), jax.tree.leaves(run.param_shardings), strict=True):
        assert x.sharding.is_equivalent_to(sh, x.ndim), (x.sharding, sh)
    _, on_mesh, _ = load_run_params(run_dir, sharding=run.param_shardings)
    same(on_mesh, want["grpo"], "load_run_params(sharding=mesh)")
    checked.append("init_checkpoint")
    return {"devices": jax.device_count(), "checked": checked}


if __name__ == "__main__":
    mode, out, mesh_arg = sys.argv[1:4]
    mesh = tuple(int(v) for v in mesh_arg.split(","))
    result = save(out, mesh) if mode == "save" else load(out, mesh)
    print(json.dumps(result))
