"""The Pallas TPU kernel, run on CPU in TPU interpret mode, against the reference."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from sif_jax.kernels.region_attention.reference import attention_reference
from sif_jax.kernels.region_attention.tpu import region_attention_tpu
from tests.kernels.cases import Case, assert_matches_reference

# Small blocks so that a few dozen tokens already span several q and kv blocks.
tpu16 = functools.partial(region_attention_tpu, block_q=16, block_k=16)

CASES = {
    # causal self-attention, GQA 4:2, masses, AdaptVis alpha, length 40 (not a block multiple)
    "causal_gqa_alpha": Case(q_len=40, kv_len=40, alpha=True),
    # causal + left padding: the first queries see no key (fully masked rows -> 0, no NaN)
    "causal_left_pad_segments": Case(q_len=37, kv_len=37, left_pad=True, segments=True,
                                     heads=2, kv_heads=1),
    # cross attention with packed segments, no masses requested, head_dim 80
    "noncausal_segments_d80": Case(q_len=24, kv_len=45, causal=False, segments=True,
                                   masses=False, heads=2, kv_heads=2, head_dim=80),
    # decode: one query row against a longer cache with empty slots, alpha on that row
    "decode": Case(q_len=1, kv_len=45, kv_valid=True, alpha=True, heads=4, kv_heads=1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference_with_grads(name):
    assert_matches_reference(tpu16, CASES[name])


def test_multi_of_kv_blocks_and_default_blocks():
    # block_q != block_k, and default block sizes (one block covering everything).
    case = Case(batch=1, q_len=29, kv_len=29, heads=2, kv_heads=1, alpha=True)
    assert_matches_reference(functools.partial(region_attention_tpu, block_q=8, block_k=16), case)
    assert_matches_reference(region_attention_tpu, case, grads=False)


def test_no_races_on_two_cores():
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc

    params = pltpu.InterpretParams(detect_races=True, num_cores_or_threads=2)
    fn = functools.partial(region_attention_tpu, block_q=16, block_k=16, interpret=params)
    assert_matches_reference(fn, Case(batch=1, q_len=32, kv_len=32, heads=2, kv_heads=1))
    assert ipc.races is not None and not ipc.races.races_found


def test_generic_interpreter():
    fn = functools.partial(region_attention_tpu, block_q=16, block_k=16, interpret=True)
    assert_matches_reference(fn, Case(batch=1, q_len=20, kv_len=33, heads=2, kv_heads=1,
                                      alpha=True, segments=True))


def test_uniform_causal_blocks_are_skipped_exactly():
    # A q block entirely before the first key is never visited; its rows must still be 0.
    q, k, v, kw = Case(batch=1, q_len=48, kv_len=16, heads=2, kv_heads=2).make(3)
    out, region, visual = tpu16(q, k, v, **kw)
    ref = attention_reference(q, k, v, **kw)
    np.testing.assert_allclose(out, ref[0], atol=2e-5)
    np.testing.assert_allclose(region, ref[1], atol=2e-5)
    assert np.all(np.asarray(out)[:, :32] == 0.0)  # queries 0..31 precede every key


def test_rejects_bad_block():
    q = jnp.zeros((1, 8, 1, 16))
    with pytest.raises(ValueError, match="block_q"):
        region_attention_tpu(q, q, q, causal=True, block_q=12)


def _abstract_tpu_mesh():
    try:
        from jax._src import mesh as mesh_lib

        device = mesh_lib.AbstractDevice(device_kind="TPU v5 lite", num_cores=1, platform="tpu")
        return jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    except (ImportError, AttributeError, TypeError) as e:  # private API moved
        pytest.skip(f"no abstract TPU device in this jax: {e}")


def _custom_call_f32_results(text: str) -> list[str]:
    """Result tensor types (f32 only) of every tpu_custom_call in a lowered module."""
    types = []
    for line in text.splitlines():
        if "tpu_custom_call" in line and ") -> " in line:
            types += re.findall(r"tensor<[0-9x]+xf32>", line.rsplit(") -> ", 1)[1])
    return types


def _assert_compact_rows(text: str) -> None:
    # Per-row outputs (lse, masses, d alpha) are [B, H, nq, 1, bq]: no lane-broadcast x128.
    f32 = _custom_call_f32_results(text)
    assert f32 and all(re.fullmatch(r"tensor<\d+x\d+x\d+x1x\d+xf32>", t) for t in f32), f32


@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_lowers_for_tpu(head_dim):
    """Mosaic lowering (block shapes, ops) of forward and backward for a real TPU generation.

    Runs the Python side of the Mosaic lowering only; the Mosaic compiler itself needs a TPU.
    """
    mesh = _abstract_tpu_mesh()
    b, n = 1, 512
    q = jnp.zeros((b, n, 4, head_dim), jnp.bfloat16)
    k = jnp.zeros((b, n, 2, head_dim), jnp.bfloat16)
    ones = jnp.ones((b, n), bool)
    kw = dict(causal=True, visual_mask=ones, region_mask=ones, kv_valid=ones,
              visual_scale=jnp.ones((b, n), jnp.float32),
              q_segment_ids=jnp.zeros((b, n), jnp.int32),
              kv_segment_ids=jnp.zeros((b, n), jnp.int32))

    def loss(q, k, v):
        out, _, _ = region_attention_tpu(q, k, v, interpret=None, block_q=256, block_k=256, **kw)
        return jnp.sum(out.astype(jnp.float32) ** 2)

    with jax.sharding.use_abstract_mesh(mesh):
        text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, k, k).lower(
            lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") == 3  # forward, dq, dk/dv
    _assert_compact_rows(text)


def test_lowers_for_tpu_decode_compact_masses():
    """One query row (block_q 8 = the padded length): the (1, 8) mass blocks are legal too."""
    mesh = _abstract_tpu_mesh()
    q = jnp.zeros((2, 1, 4, 128), jnp.bfloat16)
    k = jnp.zeros((2, 384, 2, 128), jnp.bfloat16)
    mask = jnp.ones((2, 384), bool)

    def fwd(q, k, v):
        return region_attention_tpu(q, k, v, causal=True, visual_mask=mask, region_mask=mask,
                                    interpret=None)

    with jax.sharding.use_abstract_mesh(mesh):
        lowered = jax.jit(fwd).trace(q, k, k).lower(lowering_platforms=("tpu",))
    _assert_compact_rows(lowered.as_text())
    out_shapes = [x.shape for x in jax.tree.leaves(lowered.out_info)]
    assert out_shapes == [(2, 1, 4, 128), (2, 4, 1), (2, 4, 1)]
