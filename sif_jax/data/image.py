"""Qwen2-VL / Qwen2.5-VL image preprocessing in NumPy + Pillow (no torch), as HF's processor.

`process_image(image, vision_config)` = HF `Qwen2VLImageProcessor(Pil)` on one RGB image:

1. `smart_resize`: round H and W to multiples of `factor` (= `cell_size`, patch * merge = 28),
   then rescale, keeping the aspect ratio, so H*W lies in [min_pixels, max_pixels];
2. resize the uint8 image with PIL bicubic (an image already at the target size is untouched:
   PIL returns a copy, as it does inside HF's processor);
3. rescale by 1/255 and normalise with the OpenAI CLIP mean/std (a per-channel lookup table on the
   uint8 values — the same float32 arithmetic, ~5x faster than doing it per pixel);
4. patchify to HF's `pixel_values [grid_h * grid_w, C * T * P * P]` in merge-block order
   (block_row, block_col, row_in_block, col_in_block), the still image repeated to
   `temporal_patch_size` frames, and `image_grid_thw = [[1, grid_h, grid_w]]`.

Checked against transformers' processors by `tests/data/test_image.py` on a saved fixture
(`tests/fixtures/qwen_image_processor/`, written by `tests/data/make_image_processor_fixture.py`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from sif_jax.model.config import VisionConfig

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# HF Qwen2-VL processor defaults (Qwen2.5-VL's preprocessor_config.json uses the same).
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """(H', W'): multiples of `factor`, H'*W' in [min_pixels, max_pixels], aspect ratio kept.

    Same arithmetic as HF's `smart_resize` (Python's round-half-to-even included).
    """
    if height < 1 or width < 1:
        raise ValueError(f"smart_resize: height={height}, width={width} must be positive")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"smart_resize: aspect ratio {max(height, width) / min(height, width):.1f} must be below 200 "
            f"(height={height}, width={width})"
        )
    if min_pixels > max_pixels:
        raise ValueError(f"smart_resize: min_pixels={min_pixels} > max_pixels={max_pixels}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] from a PIL image, a gray [H, W] / RGBA [H, W, 4] array, or RGB uint8."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 pixels, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"image: expected [H, W, 3] (or 4 channels), got shape {arr.shape}")
    return arr[..., :3]


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [height, width, 3], PIL bicubic (identity if the size matches)."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), resample=Image.Resampling.BICUBIC))


# Rescale in float64 then cast (as HF's `rescale`), normalise in float32 (as HF's `normalize`).
_RESCALED = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
_LUT = ((_RESCALED[None, :] - np.asarray(OPENAI_CLIP_MEAN, np.float32)[:, None])
        / np.asarray(OPENAI_CLIP_STD, np.float32)[:, None]).astype(np.float32)  # [3, 256]


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W]: (x / 255 - CLIP mean) / CLIP std, channel-first."""
    chw = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))
    return np.stack([_LUT[c][chw[c]] for c in range(3)])


def patchify(
    image: np.ndarray, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """float [C, H, W] -> (pixel_values float32 [gh * gw, C * T * P * P], image_grid_thw int64 [1, 3]).

    HF's flattening order: patches in (block_row, block_col, row_in_block, col_in_block) order, each
    patch flattened as (channel, frame, row, col) with the still image repeated T times.
    """
    c, h, w = image.shape
    if h % (patch_size * merge_size) or w % (patch_size * merge_size):
        raise ValueError(
            f"patchify: image {h}x{w} must be a multiple of patch*merge={patch_size * merge_size} on both sides"
        )
    gh, gw = h // patch_size, w // patch_size
    x = image.reshape(c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # [bh, bw, mh, mw, C, P, P]
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], temporal_patch_size, *x.shape[5:]))
    pixel_values = np.ascontiguousarray(x, dtype=np.float32).reshape(gh * gw, c * temporal_patch_size * patch_size**2)
    return pixel_values, np.array([[1, gh, gw]], np.int64)


@dataclasses.dataclass(frozen=True)
class ProcessedImage:
    """pixel_values float32 [N, C*T*P*P]; image_grid_thw int64 [1, 3]; resized_hw (H', W') in pixels."""

    pixel_values: np.ndarray
    image_grid_thw: np.ndarray
    resized_hw: tuple[int, int]



def process_image(
    image: np.ndarray | Image.Image,
    vision: VisionConfig,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ProcessedImage:
    """One RGB image -> HF Qwen2-VL processor outputs, with the geometry of `vision` (cell_size
    as the resize factor, patch size, merge size, temporal patch size)."""
    rgb = to_rgb_uint8(image)
    h, w = smart_resize(rgb.shape[0], rgb.shape[1], vision.cell_size, min_pixels, max_pixels)
    resized = resize_image(rgb, h, w)
    pixel_values, grid = patchify(
        normalize(resized), vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
    )
    return ProcessedImage(pixel_values, grid, (h, w))


def num_image_tokens(image_grid_thw: np.ndarray, vision: VisionConfig) -> int:
    """LLM visual tokens of one image: t * h * w / merge**2."""
    t, h, w = (int(v) for v in np.asarray(image_grid_thw).reshape(-1, 3)[0])
    return t * h * w // vision.merge_unit
