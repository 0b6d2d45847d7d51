"""Qwen3-VL image preprocessing in NumPy + Pillow, as transformers' `Qwen2VLImageProcessorPil` with
the released Qwen3-VL `preprocessor_config.json` (patch 16, merge 2, mean = std = 0.5,
min / max pixels 65536 / 16777216).

Resize factor = patch * merge (32); resize, patch order and grids reuse `sif_jax.data.image`; only
the normalisation constants differ from Qwen2.5-VL's (CLIP mean/std there).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from sif_jax.data.image import ProcessedImage, patchify, resize_image, smart_resize, to_rgb_uint8
from sif_jax.model.qwen3_vl.config import (
    QWEN3_VL_IMAGE_MEAN,
    QWEN3_VL_IMAGE_STD,
    QWEN3_VL_MAX_PIXELS,
    QWEN3_VL_MIN_PIXELS,
    Qwen3VLVisionConfig,
)

# Rescale in float64 then cast (HF's `rescale`), normalise in float32 (HF's `normalize`).
_RESCALED = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W]: (x / 255 - mean) / std per channel, channel-first."""
    lut = ((_RESCALED[None, :] - np.asarray(mean, np.float32)[:, None])
           / np.asarray(std, np.float32)[:, None]).astype(np.float32)
    chw = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))
    return np.stack([lut[c][chw[c]] for c in range(3)])


def process_image(
    image: np.ndarray | Image.Image,
    vision: Qwen3VLVisionConfig,
    min_pixels: int = QWEN3_VL_MIN_PIXELS,
    max_pixels: int = QWEN3_VL_MAX_PIXELS,
    mean: Sequence[float] = QWEN3_VL_IMAGE_MEAN,
    std: Sequence[float] = QWEN3_VL_IMAGE_STD,
) -> ProcessedImage:
    """One RGB image -> HF processor outputs: pixel_values float32 [gh * gw, C*T*P*P] in
    merge-block order, image_grid_thw [[1, gh, gw]], resized (H', W') in pixels (multiples of
    `vision.cell_size`). Raises ValueError as `sif_jax.data.image.smart_resize` / `to_rgb_uint8`."""
    rgb = to_rgb_uint8(image)
    h, w = smart_resize(rgb.shape[0], rgb.shape[1], vision.cell_size, min_pixels, max_pixels)
    pixel_values, grid = patchify(normalize(resize_image(rgb, h, w), mean, std), vision.patch_size,
                                  vision.spatial_merge_size, vision.temporal_patch_size)
    return ProcessedImage(pixel_values, grid, (h, w))
