"""Writes tests/fixtures/qwen_image_processor/*.npz: HF transformers' Qwen2-VL image processors
on small deterministic images, the oracle for `sif_jax.data.image` (tests need no torch).

Run with the torch + transformers venv:

    . /work/tvenv/bin/activate && python tests/data/make_image_processor_fixture.py

Each file holds `image` (uint8 [H, W, 3] input), `min_pixels`, `max_pixels`, and for both of
transformers' backends — `Qwen2VLImageProcessorPil` (PIL resize, `pil_*`) and
`Qwen2VLImageProcessor` (torchvision resize, `tv_*`, only where torchvision is installed; it is not
in /work/tvenv) — `*_pixel_values` [N, 1176] and
`*_image_grid_thw` [1, 3]. Images are non-square, with sides not multiples of 28 (so they are
resized; one of them up by min_pixels, one down by max_pixels), plus one already at a multiple
of 28 (no resize: the patch order alone is compared).
"""

from __future__ import annotations

import os

import numpy as np
import transformers
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl, image_processing_qwen2_vl

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "qwen_image_processor")

# name: (height, width, min_pixels, max_pixels)
CASES = {
    "plain_50x73": (50, 73, 56 * 56, 28 * 28 * 16),  # rounds to 56x84: a resize within bounds
    "upscale_30x45": (30, 45, 56 * 84, 28 * 28 * 16),  # below min_pixels: scaled up
    "downscale_131x97": (131, 97, 56 * 56, 28 * 28 * 8),  # above max_pixels: scaled down
    "exact_56x84": (56, 84, 56 * 56, 28 * 28 * 16),  # already a multiple of 28: no resize
}


def make_image(seed: int, height: int, width: int) -> np.ndarray:
    """Smooth gradients + a few hard-edged rectangles + noise: exercises the bicubic kernel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([
        127 + 100 * np.sin(xx / 7.0 + seed),
        127 + 100 * np.cos(yy / 5.0 - seed),
        255 * (xx + yy) / (height + width),
    ], axis=-1)
    for _ in range(4):
        y0, x0 = rng.integers(0, height - 4), rng.integers(0, width - 4)
        img[y0:y0 + rng.integers(3, 15), x0:x0 + rng.integers(3, 15)] = rng.integers(0, 256, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for seed, (name, (h, w, lo, hi)) in enumerate(CASES.items()):
        image = make_image(seed, h, w)
        out = {"image": image, "min_pixels": np.int64(lo), "max_pixels": np.int64(hi)}
        size = {"shortest_edge": lo, "longest_edge": hi}
        backends = [("pil", image_processing_pil_qwen2_vl.Qwen2VLImageProcessorPil)]
        if transformers.utils.is_torchvision_available():
            backends.append(("tv", image_processing_qwen2_vl.Qwen2VLImageProcessor))
        for prefix, cls in backends:
            proc = cls(size=size)
            res = proc(images=[image], return_tensors="np")
            out[f"{prefix}_pixel_values"] = np.asarray(res["pixel_values"], np.float32)
            out[f"{prefix}_image_grid_thw"] = np.asarray(res["image_grid_thw"], np.int64)
        out["transformers_version"] = np.array(transformers.__version__)
        np.savez_compressed(os.path.join(OUT, f"{name}.npz"), **out)
        print(name, image.shape, "->", out["pil_image_grid_thw"].tolist(), out["pil_pixel_values"].shape)


if __name__ == "__main__":
    main()
