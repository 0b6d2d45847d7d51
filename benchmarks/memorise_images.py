"""Can a model tell images apart? Memorising the grounding captions of a few fixed scenes.

    python benchmarks/memorise_images.py --preset=tiny --images=8 --steps=300

Every example has the same prompt ("Name every object from left to right.", `sif_jax.data.captions`), so
the captions of `--images` fixed scenes can only be told apart, and their loss brought near 0, by
reading the image. Trains a fresh model (AdamW, constant `--learning_rate`) on the one batch of all of
them and prints, every `--every` steps, the loss and the teacher-forced next-token accuracy over the
caption tokens with each scene's own image and with the next scene's image. Own near 1 with the
swapped one lower: image information reaches the language model and can be used. A model that memorises
this way but whose held-out probe (`sft_probe.py --captions --other_image`) does not depend on the image
has not learned to read images, only to recognise them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python benchmarks/memorise_images.py` from the repository root
    sys.path.insert(0, ROOT)


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--images", type=int, default=8, help="fixed scenes (one batch)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=50, help="steps between measurements")
    ap.add_argument("--learning_rate", type=float, default=3e-3)
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.images < 2:
        ap.error(f"--images={args.images}: need at least 2 scenes to swap images between")

    import jax
    import jax.numpy as jnp
    import optax

    from sif_jax.data.batching import collate_sft
    from sif_jax.data.captions import caption_example
    from sif_jax.data.pipeline import BuiltinSource, PreprocessConfig, Preprocessor
    from sif_jax.data.prompts import get_prompt
    from sif_jax.data.scenes import SceneConfig, generate_scene
    from sif_jax.data.tokenizer import BuiltinTokenizer
    from sif_jax.model.family import family_of, get_preset
    from sif_jax.sft import sft_loss_terms

    config = get_preset(args.preset)
    family = family_of(config)
    module = family.module(config)
    pre = Preprocessor(BuiltinTokenizer(), config, PreprocessConfig.from_prompt(get_prompt("builtin")))
    source = BuiltinSource(seed=args.seed, size=args.images, split="train",
                           scene_config=SceneConfig(height=args.image_size, width=args.image_size))
    own = [pre(caption_example(generate_scene(source.scene_seed(i), source.scene_config), i))
           for i in range(args.images)]
    image_keys = ("pixel_values", "image_grid_thw", "image_patches")
    swapped = [{**p, **{k: own[(i + 1) % len(own)][k] for k in image_keys}} for i, p in enumerate(own)]
    longest = max(len(p["prompt_tokens"]) + len(p["target_tokens"]) + 1 for p in own)
    buckets = {"length_buckets": (longest,), "patch_buckets": (max(p["image_patches"] for p in own),)}
    batch, batch_swapped = collate_sft(own, config, **buckets), collate_sft(swapped, config, **buckets)
    mask = batch.loss_mask
    params = family.init_params(config, jax.random.key(args.seed))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(args.learning_rate, weight_decay=0.0))
    opt_state = optimizer.init(params)

    @jax.jit
    def step(p, s, inputs):
        def loss_fn(q):
            num, den = sft_loss_terms(q, inputs, mask, config=config)
            return num / den

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    @jax.jit
    def accuracy(p, inputs):
        _, aux = module.apply({"params": p}, **family.model_inputs(inputs), return_hidden=True)
        pred = jnp.argmax(aux["hidden"][:, :-1] @ family.lm_head_kernel(p, config), -1)
        m = mask[:, 1:]
        return jnp.sum((pred == inputs["input_ids"][:, 1:]) * m) / jnp.sum(m)

    rows, start = [], time.time()
    for s in range(1, args.steps + 1):
        params, opt_state, loss = step(params, opt_state, batch.inputs.arrays())
        if s % args.every == 0 or s == args.steps:
            row = {"step": s, "loss": float(loss), "own": float(accuracy(params, batch.inputs.arrays())),
                   "swapped": float(accuracy(params, batch_swapped.inputs.arrays()))}
            rows.append(row)
            print(f"step {s}: loss {row['loss']:.3f}  caption accuracy own image {row['own']:.3f}, "
                  f"next scene's image {row['swapped']:.3f}  ({time.time() - start:.0f} s)", flush=True)
    return rows


if __name__ == "__main__":
    main()
