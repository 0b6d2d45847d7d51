"""HF outputs for prompts with two images each (SIFThinker's RGB + depth turn), on the tiny fixture model.

    python tests/model/make_two_image_fixture.py     # torch + transformers; after make_hf_fixture.py

Loads tests/fixtures/hf_tiny_qwen2_5_vl (written by make_hf_fixture.py) and writes `two_images.npz` there:
a left-padded batch of two rows, each `text, <vs> image <ve>, text, <vs> image <ve>, text` with grids of
different shapes (the "RGB" and "depth" images of one example), and HF's `get_rope_index` positions, rope
deltas and logits. CI reads the file; it never runs this script.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_hf_fixture import EOS, IMAGE, OUT, V_END, V_START, hf_logits  # noqa: E402

# Per row: (RGB grid, depth grid) in patches (t, h, w). Row 0's images differ in shape; row 1's are equal.
ROW_GRIDS = [([1, 6, 10], [1, 4, 6]), ([1, 4, 4], [1, 4, 4])]


def batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
    rows, grids = [], []
    for (rgb, depth), (a, b, c) in zip(ROW_GRIDS, [(4, 3, 6), (2, 5, 3)], strict=True):
        parts = [rng.integers(10, 280, a)]
        for grid, after in ((rgb, b), (depth, c)):
            parts += [[V_START], np.full(int(np.prod(grid)) // 4, IMAGE), [V_END], rng.integers(10, 280, after)]
            grids.append(grid)
        rows.append(np.concatenate(parts + [[EOS]]))
    length = max(map(len, rows)) + 2
    input_ids = np.zeros((2, length), np.int64)
    mask = np.zeros((2, length), np.int64)
    for i, r in enumerate(rows):
        input_ids[i, length - len(r):] = r
        mask[i, length - len(r):] = 1
    grids_a = np.asarray(grids, np.int64)
    pixel_values = rng.standard_normal((int(np.prod(grids_a, axis=-1).sum()), 3 * 2 * 14 * 14)).astype(np.float32)
    return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixel_values, "image_grid_thw": grids_a}


def main() -> None:
    rng = np.random.default_rng(1)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(OUT, dtype=torch.float32).eval()
    inputs = batch(rng)
    mm = torch.from_numpy((inputs["input_ids"] == IMAGE).astype(np.int64))
    positions, deltas = model.model.get_rope_index(
        torch.from_numpy(inputs["input_ids"]), mm, torch.from_numpy(inputs["image_grid_thw"]), None, None,
        torch.from_numpy(inputs["attention_mask"]),
    )
    logits = hf_logits(model, inputs)
    path = os.path.join(OUT, "two_images.npz")
    np.savez_compressed(path, **inputs, positions=positions.numpy(), rope_deltas=deltas.numpy().reshape(-1),
                        logits=logits)
    print(f"wrote {path}: input_ids {inputs['input_ids'].shape}, grids {inputs['image_grid_thw'].tolist()}")


if __name__ == "__main__":
    main()
