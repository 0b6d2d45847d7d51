"""Orbax checkpoints of a training run: arrays (params, optimizer, RNG) plus JSON (the rest).

A step directory holds two items:
  state — the array pytree (params, optimizer state, reference params, RNG key data), saved
          sharded by orbax and restored onto the shardings the caller asks for;
  meta  — JSON: the data-iterator state, the reward state (per-prompt group means), the phase and
          the model config, so a resumed run continues with the same data order (the metric rows
          live in the run's metrics files, `loop.MetricsWriter`, not in every checkpoint).
Saves are atomic (orbax writes to a temporary directory and renames, or on gs:// marks a finished
step with commit_success.txt); readers only take finished steps (`finalized_steps`). Loading for
inference or as an initialisation restores onto the *current* devices (`load_run_params`,
`load_params_dir`), so a checkpoint saved on any mesh loads on any other. `PreemptionGuard` turns
SIGTERM (TPU preemption) into a flag the loop checks, so the last step is saved before exit.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:
    """Saves every `every` steps (and when forced), keeps the newest `max_to_keep`."""

    def __init__(self, directory: str, *, every: int, max_to_keep: int = 2) -> None:
        if every < 1:
            raise ValueError(f"checkpoint.every={every}: must be >= 1")
        # orbax takes local paths and gs:// URLs alike; only local ones are made absolute
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=max_to_keep, create=True),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Saves if `step` is on the interval (or `force`); returns whether it saved."""
        return self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force,
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict]:
        """Restores `step` (default: the latest) onto the shardings of `abstract_state`
        (a pytree of jax.ShapeDtypeStruct with `.sharding`, e.g. from `jax.eval_shape`)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        )
        return step, restored["state"], restored["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays, for `restore`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class PreemptionGuard:
    """Context manager: SIGTERM sets `.requested` instead of killing the process."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def finalized_steps(directory: str) -> list[int]:
    """The steps of a phase directory that orbax considers finished, ascending.

    Uses orbax's own step listing (`CheckpointManager.all_steps`), which skips a step that is
    still being written or was cut off by preemption. On local disks orbax writes a step under
    `<step>.orbax-checkpoint-tmp-*` and renames it when complete; on gs:// (no atomic rename) it
    writes `<step>/` in place and marks it finished with `commit_success.txt`, so there an
    all-digit directory name alone does not make a step.
    """
    manager = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    try:
        return sorted(int(s) for s in manager.all_steps())
    finally:
        manager.close()


def latest_run_checkpoint(run_dir: str) -> tuple[str, int]:
    """(phase directory, step) of the newest finished params in a training run directory: the
    GRPO phase if it has a finished checkpoint, else the SFT warm-up. A path that is itself a
    phase directory (holding numbered steps) is used as is. Unfinished steps are ignored
    (`finalized_steps`). Raises FileNotFoundError when there is none."""
    root = epath.Path(run_dir if "://" in run_dir else os.path.abspath(run_dir))  # orbax wants absolute
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory {run_dir!r} does not exist")
    for directory in (root / "grpo", root / "sft", root):
        if not directory.is_dir():
            continue
        steps = finalized_steps(str(directory))
        if steps:
            return str(directory), steps[-1]
    raise FileNotFoundError(f"{run_dir!r} holds no sif_jax checkpoint (expected a finished grpo/<step> or sft/<step>)")


Sharding = Any  # a jax.sharding.Sharding, a pytree of them matching the params, or None


def _abstract_targets(saved: Any, sharding: Sharding, where: str) -> Any:
    """ShapeDtypeStructs with the saved shapes/dtypes and the *current* `sharding` (None: every
    array on this process's first local device), so a restore never rebuilds the saving run's
    device mesh."""
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if callable(sharding) and not isinstance(sharding, jax.sharding.Sharding):
        sharding = sharding(saved)
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), saved)
    saved_struct, target_struct = jax.tree.structure(saved), jax.tree.structure(sharding)
    if saved_struct != target_struct:
        raise ValueError(f"{where}: the saved params tree does not match the target shardings' tree "
                         f"({saved_struct.num_leaves} vs {target_struct.num_leaves} arrays); another model?")
    return jax.tree.map(lambda m, sh: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sh), saved, sharding)


def _restore_args(abstract: Any) -> Any:
    return jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype),
                        abstract)


def run_checkpoint_meta(run_dir: str) -> tuple[Any, dict, str, int]:
    """(ModelConfig, meta, phase directory, step) of the newest finished checkpoint of a run,
    without its arrays. Raises FileNotFoundError (no checkpoint) or ValueError (no model config)."""
    from sif_jax.model.family import family_for_hf_config

    directory, step = latest_run_checkpoint(run_dir)
    manager = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    finally:
        manager.close()
    if "model" not in meta:
        raise ValueError(f"{directory}/{step}: checkpoint metadata has no model config")
    config = family_for_hf_config(meta["model"]).from_hf_config(meta["model"], dtype=meta.get("dtype", "float32"),
                                        param_dtype=meta.get("dtype", "float32"))
    return config, meta, directory, step


def load_run_params(run_dir: str, sharding: Sharding = None) -> tuple[Any, Any, dict]:
    """(ModelConfig, params, meta) of the newest finished checkpoint of a training run.

    Restores only the params (not the optimizer state or the reference copy), with the saved
    shapes and dtypes onto `sharding`: None puts every array on this process's first local
    device (what inference CLIs want); a `jax.sharding.Sharding` is used for every array; a
    pytree of shardings matching the params (e.g. `parallel.logical_shardings` of
    `jax.eval_shape(init_params)` on the current mesh) places each one; a callable gets the saved
    params' metadata tree and returns such a pytree (for trees whose layout, e.g. stacked layers,
    only the checkpoint knows). The saving run's device count and mesh do not matter. The model
    config comes from the checkpoint's metadata, so a checkpoint of another model size loads with
    its own shapes. A LoRA run's checkpoint (`meta["lora"]`) holds the adapters and the frozen
    base: the params returned are the base with the adapters merged in (W + alpha/r A @ B).
    """
    config, meta, directory, step = run_checkpoint_meta(run_dir)
    lora = meta.get("lora")
    restored = _restore_state_items(directory, step, sharding, lora_phase=lora is not None)
    if lora is None:
        return config, restored["params"], meta
    from sif_jax.lora import merge

    scale = float(lora["alpha"]) / int(lora["rank"])
    params = jax.jit(lambda base, adapters: merge(base, adapters, scale))(restored["base"], restored["params"])
    return config, params, meta


def load_run_adapters(run_dir: str) -> tuple[Any, Any, dict]:
    """(ModelConfig, adapters, meta) of the newest finished checkpoint of a LoRA run
    (`meta["lora"]` holds rank, alpha, dropout, targets and the base it belongs to), on this
    process's first local device. Raises ValueError for a checkpoint of full fine-tuning."""
    config, meta, directory, step = run_checkpoint_meta(run_dir)
    if "lora" not in meta:
        raise ValueError(f"{directory}/{step}: not a LoRA run (no adapters; export it as hf or orbax)")
    restored = _restore_state_items(directory, step, None, lora_phase=True, adapters_only=True)
    return config, restored["params"], meta


def _restore_state_items(directory: str, step: int, sharding: Sharding, *, lora_phase: bool,
                         adapters_only: bool = False) -> dict:
    """The state's `params` (and under LoRA its frozen `base`, which `sharding` then places;
    the small adapters are replicated over the same devices)."""
    manager = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                    item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                   "meta": ocp.JsonCheckpointHandler()},
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    where = f"{directory}/{step}"
    try:
        saved = manager.item_metadata(step)["state"]
        if saved is None or "params" not in saved:
            raise ValueError(f"{where}: the checkpoint's state has no params")
        if lora_phase and not adapters_only and saved.get("base") is None:
            raise ValueError(f"{where}: a LoRA checkpoint without its base params")
        targets = {}
        if lora_phase and not adapters_only:
            targets["base"] = _abstract_targets(saved["base"], sharding, where)
            first = jax.tree.leaves(targets["base"])[0].sharding
            rep = (jax.sharding.NamedSharding(first.mesh, jax.sharding.PartitionSpec())
                   if isinstance(first, jax.sharding.NamedSharding) else first)
            targets["params"] = _abstract_targets(saved["params"], rep, where)
        else:
            targets["params"] = _abstract_targets(saved["params"], None if adapters_only else sharding, where)
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            targets, restore_args={k: _restore_args(v) for k, v in targets.items()}, partial_restore=True)))
    finally:
        manager.close()
    return restored["state"]


def load_params_dir(path: str, sharding: Sharding = None) -> Any:
    """A params-only orbax pytree (`python -m sif_jax.export --format=orbax` writes `params/`),
    restored with its saved shapes and dtypes onto `sharding` (as in `load_run_params`), whatever
    device count or mesh wrote it."""
    path = path if "://" in path else os.path.abspath(path)
    with ocp.PyTreeCheckpointer() as ckptr:
        saved = ckptr.metadata(path)
        saved = getattr(saved, "item_metadata", saved)
        abstract = _abstract_targets(saved, sharding, path)
        return ckptr.restore(path, args=ocp.args.PyTreeRestore(abstract, restore_args=_restore_args(abstract)))
