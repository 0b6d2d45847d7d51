"""Run by test_sharding.py in a subprocess with 8 simulated CPU devices.

Computes one GRPO loss and gradient norm of the tiny model on a fixed rollout for each mesh
(data, fsdp, tensor) given on the command line and prints them as JSON. `--backend=NAME` picks the
attention backend (default: the reference); with a Pallas backend the kernel runs per shard in a
shard_map (interpreted on the CPU), and the count of shard_maps in the loss's jaxpr is reported.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from sif_jax import parallel
from sif_jax.data import pipeline as pl
from sif_jax.data.scenes import SceneConfig
from sif_jax.data.tokenizer import BuiltinTokenizer
from sif_jax.model.config import get_preset
from sif_jax.model.vlm import init_params, param_logical_axes
from sif_jax.rl.grpo import GRPOConfig, loss_grads
from sif_jax.rl.types import Rollout


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--backend=")]
    backend = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--backend=")), "reference")
    meshes = [tuple(int(x) for x in m.split(",")) for m in args]
    config = get_preset("tiny").replace(attention_backend=backend)
    tok = BuiltinTokenizer()
    source = pl.BuiltinSource(seed=0, size=8, scene_config=SceneConfig(height=112, width=112))
    pre = pl.Preprocessor(tok, config)
    batch = pl.collate([pre(source[i]) for i in range(4)], config, repeat=2, length_buckets=(128,),
                       patch_buckets=(64,))
    params = init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    rows, steps = batch.inputs.input_ids.shape[0], 5
    completion = jnp.asarray(rng.integers(10, 800, (rows, steps)), jnp.int32)
    mask = jnp.asarray(rng.random((rows, steps)) < 0.8)
    old_logp = jnp.asarray(-rng.random((rows, steps)) * 3, jnp.float32)
    advantages = jnp.asarray(rng.standard_normal(rows), jnp.float32)
    grpo = GRPOConfig(group_size=2, beta=0.0)
    results = {}
    for shape in meshes:
        n = shape[0] * shape[1] * shape[2]
        mesh = parallel.make_mesh(shape, devices=jax.devices()[:n])
        shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
        shardings = parallel.logical_shardings(shapes, param_logical_axes(config), mesh)
        placed = jax.device_put(params, shardings)
        prompt = parallel.shard_batch(batch, mesh).inputs
        sharded = [jax.device_put(x, parallel.batch_sharding(mesh, x.shape)) for x in (completion, mask, old_logp,
                                                                                     advantages)]
        rollout = Rollout.create(prompt, sharded[0], sharded[1], sharded[2], None, sharded[3], loss_mask=sharded[1])
        args = jax.block_until_ready((placed, rollout, jnp.float32(rows)))

        @jax.jit
        def loss_and_grad_norm(*a):
            grads, (num, _, _) = loss_grads(*a, config=config, grpo=grpo)
            return num / rows, jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))

        # One multi-device program, waited for: XLA:CPU runs each device's part on a pool with a
        # thread per device, so several programs with collectives in flight at once (e.g. one
        # small reduction per gradient leaf) can park every thread in different rendezvous.
        with jax.set_mesh(mesh):  # the mesh the Pallas kernels shard_map over, as train.py sets it
            loss, grad_norm = jax.block_until_ready(loss_and_grad_norm(*args))
            jaxpr = str(jax.make_jaxpr(lambda *a: loss_grads(*a, config=config, grpo=grpo))(*args))
        sharded_leaves = sum(1 for s in jax.tree.leaves(shardings) if not s.is_fully_replicated)
        results[",".join(map(str, shape))] = {
            "loss": float(loss),
            "grad_norm": float(grad_norm),
            "devices": len(mesh.devices.flat), "sharded_param_leaves": sharded_leaves,
            "shard_maps": jaxpr.count("shard_map["), "pallas_calls": jaxpr.count("pallas_call["),
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
