"""Times the heat-map (`sif_jax.attention_map.visual_attention_map`) on a 1024 x 768 image.

    PYTHONPATH=$PWD JAX_PLATFORMS=cpu python benchmarks/heatmap.py /tmp/heatmap_bench [probabilities] [one_hot]

Writes `<dir>/hf` (the `tiny` preset with random weights, `save_hf_checkpoint`) and `<dir>/img.png` (random
1024 x 768 pixels) once, then times each method on the preprocessed prompt with 320 completion tokens (the
`generate --max_new_tokens` default): "probabilities" twice (the first call compiles), "one_hot" once (16
copies per pass). The same files serve the end-to-end command in benchmarks/RESULTS.md:
`python -m sif_jax.generate --checkpoint=<dir>/hf --tokenizer=builtin --image=<dir>/img.png --question=...
[--heatmap=out.png]`.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
from PIL import Image


def prepare(root: str) -> None:
    from sif_jax.convert.hf import save_hf_checkpoint
    from sif_jax.model.config import tiny
    from sif_jax.model.family import family_of

    if not os.path.isdir(os.path.join(root, "hf")):
        cfg = tiny()
        save_hf_checkpoint(cfg, family_of(cfg).init_params(cfg, jax.random.key(0)), os.path.join(root, "hf"))
    if not os.path.isfile(os.path.join(root, "img.png")):
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (768, 1024, 3), np.uint8)).save(os.path.join(root, "img.png"))


def main(argv: list[str]) -> None:
    from sif_jax.attention_map import visual_attention_map
    from sif_jax.checkpoint_loading import load_model
    from sif_jax.data.batching import collate
    from sif_jax.data.image import read_image_file as read_image
    from sif_jax.data.pipeline import Preprocessor

    root, methods = argv[0], argv[1:] or ["probabilities"]
    os.makedirs(root, exist_ok=True)
    prepare(root)
    loaded = load_model(os.path.join(root, "hf"), tokenizer="builtin")
    config, tok = loaded.config, loaded.tokenizer
    example = Preprocessor(tok, config)({"id": "bench", "image": read_image(os.path.join(root, "img.png")),
                                         "depth": None, "problem": "Is the red cube left of the blue sphere?",
                                         "answer": "", "boxes": np.zeros((0, 4), np.float32)})
    batch = collate([example], config, length_buckets=(2048,))
    completion = np.random.default_rng(0).integers(10, 90, (1, 320)).astype(np.int32)
    mask = np.ones((1, 320), bool)
    for method in methods:
        for call in range(2 if method == "probabilities" else 1):
            start = time.perf_counter()
            heat, visual = visual_attention_map(loaded.params, batch.inputs, completion, mask, config=config,
                                                layers=(-1,), method=method, chunk=16, progress=True)
            print(f"{method} call {call + 1}: {time.perf_counter() - start:.1f} s ({heat.size} visual tokens, "
                  f"heat sum {heat.sum():.6f}, visual mass {visual:.6f})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
