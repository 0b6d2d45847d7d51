"""Device mesh, logical-axis rules and shardings (the pjit side of training).

Params carry logical axis names (`embed`, `mlp`, `heads`, ...; see the model). A rule table maps
them onto the mesh axes ('data', 'fsdp', 'tensor'); `jax.jit` with these in/out shardings is the
pjit. A dimension that a mesh axis does not divide is replicated along that axis instead of
failing, so the tiny model runs on any mesh and the released models shard as intended.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Batch-like axes go over data and fsdp ("batch": the rows of a data
# batch, `batch_sharding`); weights' model dimension over fsdp (ZeRO-3 style), their
# head/mlp/vocab dimension over tensor (Megatron style).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vision_embed", "fsdp"),
    ("vision_merged", "fsdp"),
    ("patch", None),
    ("mlp", "tensor"),
    ("vision_mlp", "tensor"),
    ("vision_merged_out", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vision_heads", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("qkv", None),
    ("norm", None),
    ("layers", None),  # the leading axis of scanned (stacked) layer params: never sharded
    ("lora_rank", "fsdp"),  # LoRA factors' rank axis, where their other axes leave fsdp free
)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """`jax.distributed.initialize()` when running multi-process; a no-op for one process.

    On a Cloud TPU VM all three arguments are discovered automatically; elsewhere pass them
    (`config.distributed.*`).
    """
    if num_processes is not None and num_processes <= 1:
        return
    if coordinator_address is None and num_processes is None and not _on_multihost_tpu():
        return
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def _on_multihost_tpu() -> bool:
    """True on a Cloud TPU VM (GCE or GKE): jax then discovers coordinator, process count and id
    itself (from the metadata server on TPU VMs), also for a single host."""
    try:  # jax's own check (libtpu and TPU devices present); no network access
        from jax._src.cloud_tpu_init import running_in_cloud_tpu_vm
    except ImportError:
        return False
    return bool(running_in_cloud_tpu_vm)


def make_mesh(shape: Mapping[str, int] | Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh. A size of -1 takes the remaining devices.

    Raises ValueError (naming the sizes) when the product does not equal the device count.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = [int(shape[a]) for a in MESH_AXES] if isinstance(shape, Mapping) else [int(s) for s in shape]
    if len(sizes) != 3:
        raise ValueError(f"mesh shape {sizes}: expected 3 sizes for {MESH_AXES}")
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh shape {sizes}: at most one axis may be -1")
    if -1 in sizes:
        rest = math.prod(s for s in sizes if s != -1)
        if len(devices) % rest:
            raise ValueError(f"mesh shape {sizes}: {len(devices)} devices are not divisible by {rest}")
        sizes[sizes.index(-1)] = len(devices) // rest
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh shape {dict(zip(MESH_AXES, sizes, strict=True))} needs {math.prod(sizes)} devices; "
            f"{len(devices)} are available"
        )
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes that do not divide their dimension (replicating that dimension)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        if axes is None:
            fitted.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        kept = []
        for axis in axes:
            if dim % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]) == 0:
                kept.append(axis)
        fitted.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
    return PartitionSpec(*fitted)


def logical_shardings(
    shapes: Any, logical_axes: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
) -> Any:
    """NamedShardings for a pytree of arrays/ShapeDtypeStructs with logical PartitionSpecs."""
    def one(shape, logical):
        mesh_spec = nn.logical_to_mesh_axes(tuple(logical), rules)
        return NamedSharding(mesh, _fit_spec(mesh_spec, shape.shape, mesh))

    return jax.tree.map(one, shapes, logical_axes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, shape: Sequence[int], batch_axis: int = 0,
                   rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> NamedSharding:
    """Shards `batch_axis` over the mesh axes of the logical "batch" rule (('data', 'fsdp') in
    `DEFAULT_RULES`) where they divide it; everything else replicated."""
    spec = [None] * len(shape)
    spec[batch_axis] = dict(rules)["batch"]
    return NamedSharding(mesh, _fit_spec(PartitionSpec(*spec), shape, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places a host batch (a `sif_jax.batch` dataclass: `Batch`, `ModelInputs`) on the mesh.

    Each array field is sharded on the batch axis its field declares (`batch_axis` metadata,
    `sif_jax.batch.batch_field`), fields declaring None (e.g. `image_grid_thw`) are replicated;
    nested batch dataclasses are placed likewise; None, scalars and the host-only fields (e.g.
    `Batch.targets`, not pytree nodes) stay as they are. Returns a new batch of the same type.
    """
    updates = {}
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        if not field.metadata.get("pytree_node", True):
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            updates[field.name] = shard_batch(value, mesh)
        elif isinstance(value, (np.ndarray, jax.Array)):
            axis = field.metadata.get("batch_axis")
            sharding = replicated(mesh) if axis is None else batch_sharding(mesh, value.shape, axis)
            updates[field.name] = jax.device_put(value, sharding)
    return dataclasses.replace(batch, **updates)


def sharding_leaves(tree: Any) -> tuple | None:
    """The shardings of a pytree's leaves as a hashable tuple (a jit static argument), or None
    when a leaf carries none (a host array). With `constrain_leaves` this pins a traced result, e.g.
    a gradient, to its parameters' layout: without it XLA may return the gradient replicated on
    every chip (a whole model's worth per chip under FSDP)."""
    shardings = tuple(getattr(x, "sharding", None) for x in jax.tree.leaves(tree))
    return None if any(s is None for s in shardings) else shardings


def constrain_leaves(tree: Any, shardings: tuple | None) -> Any:
    """`jax.lax.with_sharding_constraint` leaf by leaf with `sharding_leaves`' tuple (None: as is)."""
    if shardings is None:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    if len(leaves) != len(shardings):
        raise ValueError(f"{len(shardings)} shardings for a tree of {len(leaves)} leaves")
    return jax.tree.unflatten(treedef, [jax.lax.with_sharding_constraint(x, s)
                                        for x, s in zip(leaves, shardings, strict=True)])


def to_host(x: Any) -> np.ndarray:
    """A NumPy copy of a (possibly multi-process) array: gathered across processes when part of
    it lives on another host, so every process sees the same global value."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def optimizer_shardings(optimizer: Any, boxed_params: Any, mesh: Mesh,
                        rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
    """Shardings of `optimizer.init(params)`: moments follow their params' logical axes (optax
    keeps flax's partitioning boxes), scalars such as step counts are replicated.

    Args:
      boxed_params: abstract params still wrapped in `nn.LogicallyPartitioned` boxes.
    """
    abstract = jax.eval_shape(optimizer.init, boxed_params)
    return logical_shardings(nn.unbox(abstract), nn.get_partition_spec(abstract), mesh, rules)


def any_process(flag: bool) -> bool:
    """True if `flag` is True on any process (every process gets the same answer), so that all
    hosts stop at the same step when one of them is preempted."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))
