"""The region-attention kernel compiled by Mosaic for v4, v5e, v5p and v6e, sharded on a 4-chip mesh.

Through the public entry point (`ops.attention`, backend "pallas_tpu"), as the model calls it:
compile-vs-interpret follows the platform lowered for, and the Pallas call sits in a shard_map
(batch over data/fsdp, heads over tensor). The compiled program must contain the Mosaic custom
calls (forward, dq, dk/dv) and no interpreter loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sif_jax.kernels.region_attention.ops import attention
from tests.tpu_aot.conftest import topology

GENERATIONS = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
# (q heads, kv heads, head_dim, causal): Qwen2.5-VL-7B text (28:4), 3B text (16:2), the vision tower (16, 80).
SHAPES = {"text_7b": (28, 4, 128, True), "text_3b": (16, 2, 128, True), "vision": (16, 16, 80, False)}


def _mesh(name: str) -> Mesh:
    devices = np.array(topology(name).devices[:4]).reshape(1, 2, 2)
    return Mesh(devices, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("generation", list(GENERATIONS))
def test_kernel_compiles_with_mosaic_sharded(generation, shape):
    heads, kv_heads, head_dim, causal = SHAPES[shape]
    mesh = _mesh(GENERATIONS[generation])
    batch, length = 4, 384
    rows = NamedSharding(mesh, P(("data", "fsdp"), None))
    qkv = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
    q = jax.ShapeDtypeStruct((batch, length, heads, head_dim), jnp.bfloat16, sharding=qkv)
    kv = jax.ShapeDtypeStruct((batch, length, kv_heads, head_dim), jnp.bfloat16, sharding=qkv)
    mask = jax.ShapeDtypeStruct((batch, length), jnp.bool_, sharding=rows)
    seg = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=rows)

    def step(q, k, v, mask, seg):
        def loss(q, k, v):
            r = attention(q, k, v, causal=causal, kv_valid=mask, visual_mask=mask, region_mask=mask,
                          q_segment_ids=seg, kv_segment_ids=seg, backend="pallas_tpu")
            return jnp.sum(r.out.astype(jnp.float32) ** 2), (r.region_mass, r.visual_mass)

        return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)

    with jax.default_device(mesh.devices.flat[0]), jax.set_mesh(mesh):
        compiled = jax.jit(step).lower(q, kv, kv, mask, seg).compile()
    text = compiled.as_text()
    assert text.count("tpu_custom_call") == 3, "forward, dq and dk/dv must each be one Mosaic call"
    (dq, dk, _), (region, _) = jax.tree.map(lambda s: s.shape, compiled.out_info)
    assert dq == (batch, length, heads, head_dim) and dk == (batch, length, kv_heads, head_dim)
    assert region == (batch, heads, length)
    # Sharded, not replicated: each chip holds a quarter of the batch x heads of dq.
    per_chip = compiled.out_info[0][0].sharding.shard_shape(dq)
    assert per_chip == (batch // 2, length, heads // 2, head_dim)


def test_default_backend_picks_mosaic_for_the_target():
    """backend=None picks the kernel for the platform being compiled for, not the CPU host."""
    mesh = _mesh("v5p:2x2x1")
    q = jax.ShapeDtypeStruct((4, 256, 4, 128), jnp.bfloat16,
                             sharding=NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None)))

    def fwd(q):
        return attention(q, q, q, causal=True).out

    with jax.default_device(mesh.devices.flat[0]), jax.set_mesh(mesh):
        text = jax.jit(fwd).lower(q).compile().as_text()
    assert text.count("tpu_custom_call") == 1
