"""Orbax checkpoints of a training run: arrays (params, optimizer, RNG) plus JSON (the rest).

A step directory holds two items:
  state — the array pytree (params, optimizer state, reference params, RNG key data), saved
          sharded by orbax and restored onto the shardings the caller asks for;
  meta  — JSON: step, reward history (per-prompt group means), data-iterator state, metrics
          history and the config, so a resumed run continues with the same data order.
Saves are atomic (orbax writes to a temporary directory and renames). `PreemptionGuard` turns
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


def latest_run_checkpoint(run_dir: str) -> tuple[str, int]:
    """(phase directory, step) of the newest params in a training run directory: the GRPO
    phase if it has a checkpoint, else the SFT warm-up. A path that is itself a phase
    directory (holding numbered steps) is used as is."""
    root = epath.Path(run_dir if "://" in run_dir else os.path.abspath(run_dir))  # orbax wants absolute
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory {run_dir!r} does not exist")
    for directory in (root / "grpo", root / "sft", root):
        if not directory.is_dir():
            continue
        steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
        if steps:
            return str(directory), max(steps)
    raise FileNotFoundError(f"{run_dir!r} holds no sif_jax checkpoint (expected grpo/<step> or sft/<step>)")


def load_run_params(run_dir: str) -> tuple[Any, Any, dict]:
    """(ModelConfig, params, meta) of the newest checkpoint of a training run, for inference.

    Restores only what it needs, as saved (NumPy/host arrays); the model config comes from the
    checkpoint's metadata, so a checkpoint of another model size loads with its own shapes.
    """
    from sif_jax.model.config import ModelConfig

    directory, step = latest_run_checkpoint(run_dir)
    manager = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if "model" not in meta:
            raise ValueError(f"{directory}/{step}: checkpoint metadata has no model config")
        config = ModelConfig.from_hf_config(meta["model"], dtype=meta.get("dtype", "float32"),
                                            param_dtype=meta.get("dtype", "float32"))
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    finally:
        manager.close()
    return config, state["params"], meta
