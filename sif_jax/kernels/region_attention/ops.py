"""Dispatch for region attention (METHODS §5): picks the backend, checks the arguments, shards the kernels.

backend=None picks by the platform being compiled for (`target_platform()`: the default
device's platform, else `jax.default_backend()`): "tpu" -> "pallas_tpu", "gpu" -> "pallas_gpu",
anything else -> "reference". Explicit backends:

  "reference"   plain jnp (materialises [B, Hq, Lq, Lk]); the oracle.
  "xla"         `jax.nn.dot_product_attention` when neither masses nor visual_scale are asked
                for (segment / padding / causal masks go in its `mask`), else the reference.
  "pallas_tpu"  the Mosaic TPU kernel. Lowered for a TPU it is compiled by Mosaic; lowered for
                any other platform it runs in the generic Pallas interpreter (`interpret=True`;
                the TPU interpret mode's ordered callbacks cannot sit in a platform-dependent
                branch): correct but slow, meant for tests.
  "pallas_gpu"  the Pallas Triton kernel. Lowered for CUDA it is compiled; elsewhere it runs in
                the generic Pallas interpreter; cases it does not support fall back to the
                reference (logged once).

Compiled-or-interpreted follows the platform the program is *lowered for*
(`jax.lax.platform_dependent`), not the host, so an ahead-of-time compile for a TPU topology from
a CPU host gets the real Mosaic kernel.

Sharding: XLA cannot partition a Pallas call, so under a mesh (`jax.set_mesh`, or a
`jax.sharding.use_mesh` context) with more than one device the kernels run inside
`jax.shard_map`: batch over the mesh axes "data" and "fsdp", heads over "tensor" (each only
where it divides the array; otherwise that dimension is replicated), sequences whole. Every
shard computes exact attention for its rows and heads, so the result equals the unsharded one.

Block sizes and interpret settings are not part of this entry point; tests and benchmarks that
need them call `tpu.region_attention_tpu` / `gpu.region_attention_gpu` directly.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, PartitionSpec

from sif_jax.kernels.region_attention.reference import attention_reference, key_mask, single_query_attention

BACKENDS = ("reference", "xla", "pallas_tpu", "pallas_gpu")
_PLATFORM_BACKEND = {"tpu": "pallas_tpu", "gpu": "pallas_gpu", "cuda": "pallas_gpu"}
# The mesh axes the kernels shard over (the house mesh is ('data', 'fsdp', 'tensor')).
BATCH_MESH_AXES = ("data", "fsdp")
HEAD_MESH_AXIS = "tensor"

log = logging.getLogger(__name__)


@functools.cache
def _log_once(message: str) -> None:
    log.warning(message)


class AttentionOutput(NamedTuple):
    """out [B, Lq, Hq, D]; region_mass, visual_mass [B, Hq, Lq] float32, or None."""

    out: jax.Array
    region_mass: jax.Array | None
    visual_mass: jax.Array | None


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    kv_valid: jax.Array | None = None,
    visual_mask: jax.Array | None = None,
    visual_scale: jax.Array | None = None,
    region_mask: jax.Array | None = None,
    softmax_scale: float | None = None,
    backend: str | None = None,
) -> AttentionOutput:
    """Attention over [batch, length, heads, head_dim] with optional region/visual masses.

    Args:
      q: [B, Lq, Hq, D]; k, v: [B, Lk, Hkv, D] with Hq % Hkv == 0 (GQA).
      causal: bottom-right aligned causal mask.
      q_segment_ids, kv_segment_ids: int [B, Lq] / [B, Lk]; a query sees keys of its segment.
      kv_valid: bool [B, Lk]; False keys (padding, empty cache slots) are never seen.
      visual_mask, region_mask: bool [B, Lk]; which keys are visual / inside the target region.
      visual_scale: float [B, Lq]; multiplies the logits of visual keys per query row (AdaptVis).
      softmax_scale: defaults to D ** -0.5.
      backend: "reference" | "xla" | "pallas_tpu" | "pallas_gpu"; None picks for the platform.

    Returns:
      AttentionOutput(out [B, Lq, Hq, D] in q.dtype, region_mass / visual_mass float32
      [B, Hq, Lq] or None when the mask is None). Masses carry no gradient; a query row with
      no visible key gets out = 0 and masses 0.
    """
    if backend not in (None, *BACKENDS):
        raise ValueError(f"backend={backend!r}; expected one of {BACKENDS} or None")
    _validate(q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
              kv_valid=kv_valid, visual_mask=visual_mask, visual_scale=visual_scale,
              region_mask=region_mask, softmax_scale=softmax_scale)
    if backend is None:
        backend = _PLATFORM_BACKEND.get(target_platform(), "reference")
    kwargs = dict(causal=causal, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                  kv_valid=kv_valid, visual_mask=visual_mask, visual_scale=visual_scale,
                  region_mask=region_mask, softmax_scale=softmax_scale)
    if backend == "xla" and region_mask is None and visual_mask is None and visual_scale is None:
        return AttentionOutput(_xla_attention(q, k, v, **kwargs), None, None)
    if backend == "pallas_tpu":
        from sif_jax.kernels.region_attention.tpu import region_attention_tpu

        if target_platform() != "tpu":
            _log_once("region_attention: backend 'pallas_tpu' traced without a TPU target: the kernel is "
                      "compiled where the program is lowered for a TPU and interpreted elsewhere (slow)")
        compiled = functools.partial(region_attention_tpu, interpret=None)
        interpreted = functools.partial(region_attention_tpu, interpret=True)
        return _sharded(compiled, interpreted, "tpu", q, k, v, **kwargs)
    if backend == "pallas_gpu":
        from sif_jax.kernels.region_attention.gpu import region_attention_gpu

        compiled = functools.partial(region_attention_gpu, interpret=False)
        interpreted = functools.partial(region_attention_gpu, interpret=True)
        return _sharded(compiled, interpreted, "cuda", q, k, v, **kwargs)
    if q.shape[1] == 1:  # a decode step: no transposed copy of the cache (see single_query_attention)
        kwargs.pop("causal")
        return AttentionOutput(*single_query_attention(q, k, v, **kwargs))
    return AttentionOutput(*attention_reference(q, k, v, **kwargs))


def target_platform() -> str:
    """The platform a program traced now is compiled for, as far as the host can tell.

    `jax.default_device(d)` (how an ahead-of-time compile for a TPU topology is done from a CPU
    host) names it; otherwise `jax.default_backend()`. Used for choices that must be made while
    tracing (the backend for backend=None); compile-or-interpret uses the exact lowering
    platform instead.
    """
    device = jax.config.jax_default_device
    if device is not None and not isinstance(device, str):
        return device.platform
    return jax.default_backend()


def _auto_axes(mesh) -> dict[str, int]:
    """Name -> size of the mesh axes not already manual (an enclosing shard_map's)."""
    kinds = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
    return {name: size for name, size in mesh.shape.items() if kinds[name] != AxisType.Manual}


def _kernel_specs(mesh, batch: int, kv_heads: int) -> tuple[PartitionSpec, PartitionSpec, PartitionSpec]:
    """Specs for [B, L, H, D] tensors, [B, L] per-token arrays and [B, H, Lq] masses on `mesh`."""
    auto = {name: size for name, size in _auto_axes(mesh).items() if size > 1}
    batch_axes, shards = [], 1
    for name in BATCH_MESH_AXES:
        if name in auto and batch % (shards * auto[name]) == 0:
            batch_axes.append(name)
            shards *= auto[name]
    b = tuple(batch_axes) or None
    h = HEAD_MESH_AXIS if HEAD_MESH_AXIS in auto and kv_heads % auto[HEAD_MESH_AXIS] == 0 else None
    return PartitionSpec(b, None, h, None), PartitionSpec(b, None), PartitionSpec(b, h, None)


def _sharded(compiled, interpreted, platform: str, q, k, v, *, softmax_scale, causal,
             **arrays) -> AttentionOutput:
    """Runs a Pallas kernel per shard of the ambient mesh, compiled when lowered for `platform`.

    compiled / interpreted: the kernel (q, k, v, **masks) -> (out, region, visual) with the
    compiler or the interpreter; `jax.lax.platform_dependent` keeps the one matching the
    platform the program is lowered for.
    """
    arrays = {name: x for name, x in arrays.items() if x is not None}

    def kernel(q, k, v, arrays):
        def run(fn):
            return lambda q, k, v, arrays: fn(q, k, v, causal=causal, softmax_scale=softmax_scale, **arrays)

        out = jax.lax.platform_dependent(q, k, v, arrays, default=run(interpreted), **{platform: run(compiled)})
        return AttentionOutput(*out)

    mesh = jax.sharding.get_abstract_mesh()
    auto_axes = {} if mesh.empty else _auto_axes(mesh)
    if math.prod(auto_axes.values()) <= 1:
        return kernel(q, k, v, arrays)
    qkv, rows, masses = _kernel_specs(mesh, q.shape[0], k.shape[2])
    want = {name: name in arrays for name in ("region_mask", "visual_mask")}
    out_specs = AttentionOutput(qkv, masses if want["region_mask"] else None,
                                masses if want["visual_mask"] else None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(qkv, qkv, qkv, {name: rows for name in arrays}),
                         out_specs=out_specs, axis_names=set(auto_axes), check_vma=False)(q, k, v, arrays)


def _xla_attention(q, k, v, *, causal, q_segment_ids, kv_segment_ids, kv_valid, softmax_scale,
                   **_) -> jax.Array:
    """`jax.nn.dot_product_attention` with our (bottom-right causal, padding, segment) masks."""
    batch, q_len = q.shape[:2]
    kv_len = k.shape[1]
    if q_segment_ids is None and kv_valid is None and (not causal or q_len == kv_len):
        # Its own causal mask is top-left aligned, which equals ours only when Lq == Lk.
        return jax.nn.dot_product_attention(q, k, v, scale=softmax_scale, is_causal=causal)
    mask = key_mask(batch, q_len, kv_len, causal=causal, q_segment_ids=q_segment_ids,
                    kv_segment_ids=kv_segment_ids, kv_valid=kv_valid)  # [B, 1, Lq, Lk]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=softmax_scale)
    # It averages V over a row with no visible key; our contract is out = 0 there.
    seen = jnp.any(mask, axis=-1)[:, 0, :, None, None]  # [B, Lq, 1, 1]
    return jnp.where(seen, out, jnp.zeros((), out.dtype))


def _check_mask(name: str, x, shape: tuple[int, int], kinds: str) -> None:
    if x is None:
        return
    if tuple(x.shape) != shape:
        raise ValueError(f"{name}.shape={tuple(x.shape)}; expected {shape}")
    if jnp.dtype(x.dtype).kind not in kinds:
        raise ValueError(f"{name}.dtype={x.dtype}; expected kind {kinds!r} (b=bool, i/u=int, "
                         "f=float)")


def _validate(q, k, v, *, q_segment_ids, kv_segment_ids, kv_valid, visual_mask, visual_scale,
              region_mask, softmax_scale) -> None:
    """Raises ValueError naming the argument and its value when shapes/dtypes do not fit."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name}.shape={tuple(x.shape)}; expected [batch, length, heads, "
                             "head_dim]")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name}.dtype={x.dtype}; expected a floating dtype")
    if k.shape != v.shape:
        raise ValueError(f"k.shape={tuple(k.shape)} != v.shape={tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q/k/v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    batch, q_len, heads, head_dim = q.shape
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k.shape={tuple(k.shape)} does not match q.shape={tuple(q.shape)} in "
                         "batch or head_dim")
    if heads % k.shape[2]:
        raise ValueError(f"q heads {heads} not a multiple of k/v heads {k.shape[2]}")
    kv_len = k.shape[1]
    _check_mask("q_segment_ids", q_segment_ids, (batch, q_len), "iu")
    _check_mask("kv_segment_ids", kv_segment_ids, (batch, kv_len), "iu")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("q_segment_ids and kv_segment_ids must be given together")
    for name, x in (("kv_valid", kv_valid), ("visual_mask", visual_mask),
                    ("region_mask", region_mask)):
        _check_mask(name, x, (batch, kv_len), "biu")
    _check_mask("visual_scale", visual_scale, (batch, q_len), "f")
    if visual_scale is not None and visual_mask is None:
        raise ValueError("visual_scale needs visual_mask (which keys are visual)")
    if softmax_scale is not None and not float(softmax_scale) > 0:
        raise ValueError(f"softmax_scale={softmax_scale!r}; expected a positive float")
