"""How fast a from-scratch vision tower learns to tell the built-in task's objects apart, and a warm start.

    python benchmarks/vision_cells.py --steps=300 --save=/tmp/vision_cells.npz     # small preset, ~7 min, 2 cores

Trains the preset's vision tower (`model.visual`) and a linear head on dense labels: for every merged
visual token (a 28 x 28 pixel cell at the default patch 14 / merge 2), the object (colour x shape, 32
classes) that covers the most of the cell if it covers at least 20% of it, else background
(`Scene.id_mask`). Object cells weigh 4x in the cross-entropy (they are ~14% of the cells). Reports
held-out cell accuracy on test-split scenes: all cells, object cells, and the colour and shape of
object cells separately.

`--save` writes the tower's params (keyed by `jax.tree_util.keystr` path) for an SFT warm start
experiment; the library does not read the file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python benchmarks/vision_cells.py` from the repository root
    sys.path.insert(0, ROOT)

MIN_COVER = 0.2
OBJECT_WEIGHT = 4.0


def cell_objects(scene: Any, cell: int) -> np.ndarray:
    """int32 [R * C] raster-order index into `scene.objects` of the object that covers the most of
    each `cell` x `cell` pixel cell if it covers at least MIN_COVER of it, else -1."""
    h, w = scene.id_mask.shape
    rows, cols = h // cell, w // cell
    ids = scene.id_mask[:rows * cell, :cols * cell].reshape(rows, cell, cols, cell).transpose(0, 2, 1, 3)
    ids = ids.reshape(rows * cols, -1)
    out = np.full(rows * cols, -1, np.int32)
    for k in range(rows * cols):
        values, counts = np.unique(ids[k][ids[k] >= 0], return_counts=True)
        if len(values) and counts.max() >= MIN_COVER * cell * cell:
            out[k] = values[counts.argmax()]
    return out


def object_class(obj: Any) -> int:
    """1 + colour * 4 + shape: the class of a `SceneObject` (0 is background)."""
    from sif_jax.data.scenes import COLORS, SHAPES

    return 1 + list(COLORS).index(obj.color) * len(SHAPES) + list(SHAPES).index(obj.shape)


def cell_labels(scene: Any, cell: int) -> np.ndarray:
    """int32 [R * C] raster-order labels of `scene`'s cells: 0 background, else 1 + colour * 4 + shape."""
    return np.asarray([0 if i < 0 else object_class(scene.objects[i]) for i in cell_objects(scene, cell)],
                      np.int32)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--learning_rate", type=float, default=1e-3)
    ap.add_argument("--eval_images", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image_size", type=int, default=224, help="scene height and width in pixels")
    ap.add_argument("--save", default="", help="write the trained tower's params here (.npz)")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import optax

    from sif_jax.data.batching import collate
    from sif_jax.data.pipeline import BuiltinSource, PreprocessConfig, Preprocessor
    from sif_jax.data.prompts import get_prompt
    from sif_jax.data.scenes import COLORS, SHAPES, SceneConfig, generate_scene
    from sif_jax.data.tokenizer import BuiltinTokenizer
    from sif_jax.model.family import family_of, get_preset

    config = get_preset(args.preset)
    family = family_of(config)
    module = family.module(config)
    cell = config.vision.patch_size * config.vision.spatial_merge_size
    params = family.init_params(config, jax.random.key(args.seed))
    pre = Preprocessor(BuiltinTokenizer(), config, PreprocessConfig.from_prompt(get_prompt("builtin")))
    classes = 1 + len(COLORS) * len(SHAPES)
    keys = ("pixel_values", "patch_positions", "window_segments", "frame_segments")

    def batch(source: Any, indices: Sequence[int]) -> tuple[dict[str, Any], np.ndarray]:
        rows = [pre(source[i]) for i in indices]
        patches = max(r["image_patches"] for r in rows)
        b = collate(rows, config, length_buckets=(patches // config.vision.merge_unit + 256,),
                    patch_buckets=(patches,))
        inputs = family.model_inputs(b.inputs.arrays())
        labels = np.concatenate([cell_labels(generate_scene(source.scene_seed(i), source.scene_config), cell)
                                 for i in indices])
        return {k: inputs[k] for k in keys}, labels

    def logits_of(trained: Any, v: dict[str, Any]) -> jax.Array:
        feats = module.apply({"params": {"visual": trained["visual"], "text": params["text"]}}, *(v[k] for k in keys),
                             method=lambda m, *a: m.visual(*a))
        return feats @ trained["head"]["w"] + trained["head"]["b"]

    def loss_fn(trained: Any, v: dict[str, Any], labels: jax.Array) -> jax.Array:
        weight = jnp.where(labels > 0, OBJECT_WEIGHT, 1.0)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits_of(trained, v), labels)
        return (ce * weight).sum() / weight.sum()

    trained = {"visual": params["visual"],
               "head": {"w": jnp.zeros((config.vision.out_hidden_size, classes)), "b": jnp.zeros((classes,))}}
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.learning_rate, max(1, args.steps // 20), args.steps)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
    opt_state = optimizer.init(trained)

    @jax.jit
    def step(trained, opt_state, v, labels):
        loss, grads = jax.value_and_grad(loss_fn)(trained, v, labels)
        updates, opt_state = optimizer.update(grads, opt_state, trained)
        return optax.apply_updates(trained, updates), opt_state, loss

    predict = jax.jit(lambda t, v: jnp.argmax(logits_of(t, v), -1))
    scenes = SceneConfig(height=args.image_size, width=args.image_size)
    train = BuiltinSource(seed=args.seed, size=10**6, split="train", scene_config=scenes)
    test = BuiltinSource(seed=args.seed, size=args.eval_images, split="test", scene_config=scenes)

    def evaluate(t: Any) -> dict[str, float]:
        preds, labels = [], []
        for s in range(0, args.eval_images, args.batch_size):
            v, lab = batch(test, range(s, min(s + args.batch_size, args.eval_images)))
            preds.append(np.asarray(predict(t, v)))
            labels.append(lab)
        p, y = np.concatenate(preds), np.concatenate(labels)
        obj = y > 0
        n_shapes = len(SHAPES)
        return {"cells": float((p == y).mean()), "object_cells": float((p[obj] == y[obj]).mean()),
                "object_colour": float(((p[obj] - 1) // n_shapes == (y[obj] - 1) // n_shapes).mean()),
                "object_shape": float(((p[obj] - 1) % n_shapes == (y[obj] - 1) % n_shapes).mean()),
                "object_share": float(obj.mean())}

    print(f"{args.preset}: before training {evaluate(trained)}", flush=True)
    start = time.time()
    for s in range(args.steps):
        v, labels = batch(train, range(s * args.batch_size, (s + 1) * args.batch_size))
        trained, opt_state, loss = step(trained, opt_state, v, labels)
        if (s + 1) % 100 == 0 or s + 1 == args.steps:
            print(f"step {s + 1}: loss {float(loss):.3f}, {time.time() - start:.0f} s, held-out {evaluate(trained)}",
                  flush=True)
    if args.save:
        leaves = jax.tree_util.tree_leaves_with_path(trained["visual"])
        np.savez(args.save, **{jax.tree_util.keystr(k): np.asarray(x, np.float32) for k, x in leaves})  # bf16: no npz


if __name__ == "__main__":
    main()
