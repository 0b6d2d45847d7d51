"""Qwen2-VL / Qwen2.5-VL image preprocessing in NumPy + Pillow (no torch), as HF's processor.

Decoding: `load_image` is the one loader of every path (CLIs, record readers, TFDS builders,
pipeline): EXIF orientation applied by default (as HF's `load_image`), transparency composited on
white (as qwen-vl-utils / vLLM), 16-bit gray scaled by 1/257, CMYK converted — `to_rgb_uint8`.
`load_depth` decodes depth-map images (8- or 16-bit gray -> float32 [0, 1], never clipped to 8 bits;
SIF-50K's Spectral_r pseudo-colour maps as SIFThinker decodes them).

`process_image(image, vision_config)` = HF `Qwen2VLImageProcessor(Pil)` on one RGB image:

1. `smart_resize`: round H and W to multiples of `factor` (= `cell_size`, patch * merge = 28),
   then rescale, keeping the aspect ratio, so H*W lies in [min_pixels, max_pixels] (HF's arithmetic
   where it stays in that range; where it does not, the closest in-range size — see its doc);
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
import functools
import io
import math
import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sif_jax.model.config import VisionConfig

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# HF Qwen2-VL processor defaults (Qwen2.5-VL's preprocessor_config.json uses the same).
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280


def _hf_smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """HF `transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize`, verbatim arithmetic
    (Python's round-half-to-even included); it can leave [min_pixels, max_pixels] (see `smart_resize`)."""
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


def aspect_kept(height: int, width: int, new_height: int, new_width: int, factor: int) -> bool:
    """True when some scale s > 0 puts both sides within one `factor` of the exact scaling:
    |new_height - s * height| <= factor and |new_width - s * width| <= factor (what rounding each
    side of an aspect-preserving resize to a multiple of `factor` can give, the one-cell minimum
    included)."""
    lo = max((new_height - factor) / height, (new_width - factor) / width, 0.0)
    hi = min((new_height + factor) / height, (new_width + factor) / width)
    return lo <= hi and hi > 0


def _fit_cells(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int] | None:
    """Cell counts (rows, cols): rows*cols*factor^2 in [min_pixels, max_pixels], `aspect_kept`, with
    the area closest (in log) to height*width clamped to the bounds, then the ratio closest; None if none."""
    lo_cells = max(1, -(-min_pixels // factor**2))
    hi_cells = max_pixels // factor**2
    target = min(max(height * width, min_pixels), max_pixels) / factor**2
    short, long_ = (height, width) if height <= width else (width, height)
    r = long_ / short
    best: tuple[tuple[float, float], tuple[int, int]] | None = None
    # The long side is >= short side - 2 cells, so short side cells a satisfy a * (a - 2) <= hi_cells.
    for a in range(1, math.isqrt(hi_cells) + 3):
        b_lo = max(1, -(-lo_cells // a), math.ceil((a - 1) * r - 1))
        b_hi = min(hi_cells // a, math.floor((a + 1) * r + 1))
        if b_lo > b_hi:
            continue
        b = min(max(round(a * r), b_lo), b_hi)
        sides = (a * factor, b * factor) if height <= width else (b * factor, a * factor)
        if not aspect_kept(height, width, sides[0], sides[1], factor):
            continue
        score = (abs(math.log(a * b / target)), abs(math.log(b / (a * r))))
        if best is None or score < best[0]:
            best = (score, sides)
    return None if best is None else best[1]


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """(H', W') in pixels: multiples of `factor`, H'*W' in [min_pixels, max_pixels], aspect ratio kept
    up to rounding each side to a multiple of `factor` (`aspect_kept`).

    Where HF's `smart_resize` (same arithmetic, `_hf_smart_resize`) returns a size within
    [min_pixels, max_pixels] with both sides >= factor, that size is returned (HF parity). HF's
    arithmetic leaves the bound in two cases, and there this function searches the multiples of
    `factor` instead (the area closest to H*W clamped to the bounds, then the closest ratio):

    * too large: a side scaled below `factor` is raised to one `factor` while the other side keeps
      its scaled length (20x3900 at max_pixels = 64*28*28 gives 28x3108, 1.73x the maximum);
    * too small: after scaling up to min_pixels, rounding both sides *up* can pass max_pixels when
      the two bounds are close.

    Raises:
      ValueError: a non-positive side or factor, min_pixels > max_pixels, max_pixels < factor^2,
        an aspect ratio above 200 (as HF), or a size no multiple of `factor` within the bounds can
        represent with its aspect ratio (e.g. ratio 195 in a budget of 64 cells of factor^2) — the
        message names the sizes and the bounds.
    """
    if height < 1 or width < 1:
        raise ValueError(f"smart_resize: height={height}, width={width} must be positive")
    if factor < 1:
        raise ValueError(f"smart_resize: factor={factor} must be positive")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"smart_resize: aspect ratio {max(height, width) / min(height, width):.1f} must be below 200 "
            f"(height={height}, width={width})"
        )
    if min_pixels > max_pixels:
        raise ValueError(f"smart_resize: min_pixels={min_pixels} > max_pixels={max_pixels}")
    if max_pixels < factor * factor:
        raise ValueError(f"smart_resize: max_pixels={max_pixels} is below one {factor}x{factor} cell")
    h_bar, w_bar = _hf_smart_resize(height, width, factor, min_pixels, max_pixels)
    if min_pixels <= h_bar * w_bar <= max_pixels and h_bar >= factor and w_bar >= factor:
        return h_bar, w_bar
    fit = _fit_cells(height, width, factor, min_pixels, max_pixels)
    if fit is None:
        raise ValueError(
            f"smart_resize: a {height}x{width} image (aspect ratio {max(height, width) / min(height, width):.1f}) "
            f"cannot be resized to multiples of {factor} with H*W in [{min_pixels}, {max_pixels}] and its "
            f"aspect ratio kept (the budget holds {max_pixels // factor**2} cells of {factor}x{factor}); "
            f"raise max_pixels or crop the image"
        )
    return fit


WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ImageSource = str | os.PathLike | bytes | bytearray | BinaryIO | Image.Image | np.ndarray


def _composite(rgb: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """uint8 [H, W, 3] over `background` with uint8 alpha [H, W]: round((c*a + bg*(255-a)) / 255)."""
    a = alpha.astype(np.uint32)[..., None]
    bg = np.asarray(background, np.uint32)
    return ((rgb.astype(np.uint32) * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def _sixteen_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """16-bit samples (0..65535) -> uint8 by round(v / 257), the inverse of the 8->16 bit expansion v * 257."""
    a = np.asarray(a)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise ValueError(f"image: mode {mode!r} samples in [{a.min()}, {a.max()}] are outside the 16-bit range "
                         f"[0, 65535]")
    return ((a.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)


def _pil_to_rgb(im: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        gray = _sixteen_to_uint8(np.asarray(im), mode)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        raise ValueError("image: float (mode 'F') images have no defined pixel range; convert them to 8 or 16 bits")
    if mode == "CMYK":
        cmyk = np.asarray(im).astype(np.uint32)
        k = 255 - cmyk[..., 3:]
        return ((((255 - cmyk[..., :3]) * k) + 127) // 255).astype(np.uint8)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    if mode in ("LA", "La"):
        la = np.asarray(im.convert("LA") if mode == "La" else im)
        return _composite(np.repeat(la[..., :1], 3, axis=-1), la[..., 1], background)
    if mode in ("RGBA", "RGBa"):
        rgba = np.asarray(im.convert("RGBA") if mode == "RGBa" else im)
        return _composite(rgba[..., :3], rgba[..., 3], background)
    if mode in ("L", "RGB") and "transparency" in im.info:  # one colour marked transparent (PNG tRNS)
        return _pil_to_rgb(im.convert("LA" if mode == "L" else "RGBA"), background)
    try:
        return np.asarray(im.convert("RGB"), np.uint8)
    except ValueError as e:
        raise ValueError(f"image: cannot convert mode {mode!r} to RGB: {e}") from None


def to_rgb_uint8(image: np.ndarray | Image.Image, background: tuple[int, int, int] = WHITE) -> np.ndarray:
    """uint8 [H, W, 3] from a decoded image: every path into the model goes through here.

    * PIL images by mode: RGB/L/1/YCbCr/... as PIL converts; RGBA, LA, P or L/RGB with a
      transparent colour (PNG tRNS) composited over `background` (white, as qwen-vl-utils and vLLM
      do): round((c * a + bg * (255 - a)) / 255); 16-bit gray (I;16, I;16B, I;16L, I with values in
      0..65535) scaled by round(v / 257) (so a 16-bit copy v * 257 of an 8-bit image decodes to v);
      CMYK by R = (255 - C)(255 - K) / 255 (rounded; no ICC profile applied, as PIL); float mode F
      raises (no defined range).
    * arrays: uint8 [H, W] gray, [H, W, 3] RGB, [H, W, 4] RGBA (composited as above), [H, W, 2]
      gray + alpha; uint16 arrays of those layouts are scaled by round(v / 257) first (alpha too).

    EXIF orientation is not applied here (an array or already-decoded image is used as given); see
    `load_image`.

    Raises:
      ValueError: an unsupported dtype, shape or mode (the message names it).
    """
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, background)
    arr = np.asarray(image)
    if arr.dtype == np.uint16:
        arr = _sixteen_to_uint8(arr, "uint16")
    if arr.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 (or uint16) pixels, got dtype {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (2, 3, 4):
        raise ValueError(f"image: expected [H, W], [H, W, 2], [H, W, 3] or [H, W, 4], got shape {arr.shape}")
    if arr.shape[-1] == 2:
        return _composite(np.repeat(arr[..., :1], 3, axis=-1), arr[..., 1], background)
    if arr.shape[-1] == 4:
        return _composite(arr[..., :3], arr[..., 3], background)
    return arr


def load_image(
    source: ImageSource, *, exif_transpose: bool = True, background: tuple[int, int, int] = WHITE
) -> np.ndarray:
    """The one image loader: a path, encoded bytes, a binary file, a PIL image or an array ->
    uint8 [H, W, 3] (`to_rgb_uint8`). The CLIs, the record readers, the TFDS builders and the
    pipeline all decode images through it.

    `exif_transpose=True` (the default, as HF's `transformers.image_utils.load_image`) rotates /
    mirrors an encoded or PIL image by its EXIF Orientation tag (`PIL.ImageOps.exif_transpose`), so
    H, W are the displayed sizes; False keeps the stored pixel order. Arrays are used as given.

    Raises:
      FileNotFoundError: a path that does not exist.
      ValueError: undecodable data (PIL's `UnidentifiedImageError`) or an unsupported mode.
    """
    if isinstance(source, np.ndarray):
        return to_rgb_uint8(source, background)
    if isinstance(source, Image.Image):
        im = ImageOps.exif_transpose(source) if exif_transpose else source
        return to_rgb_uint8(im, background)
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(bytes(source))
    try:
        with Image.open(source) as im:
            im.load()
            if exif_transpose:
                im = ImageOps.exif_transpose(im)
            return to_rgb_uint8(im, background)
    except UnidentifiedImageError as e:
        raise ValueError(f"image: cannot decode ({e})") from None


def read_image_file(path: str, what: str = "image") -> np.ndarray:
    """uint8 [H, W, 3] from an image file (`load_image`). Raises `errors.InputError` naming `what`
    and the path when the file does not exist or cannot be decoded."""
    from sif_jax.errors import InputError, one_line

    if not os.path.exists(path):
        raise InputError(f"{what} {path!r} does not exist")
    try:
        return load_image(path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {what} {path!r}: {one_line(e)}") from None


# SIFThinker's tolerance for "a grey image saved as three equal channels" (`is_grayscale_image`).
GREY_TOLERANCE = 2


@functools.lru_cache(maxsize=1)
def spectral_r_palette() -> np.ndarray:
    """uint8 [256, 3]: matplotlib's Spectral_r colours as SIFThinker builds its palette,
    `(colormap(i / 255)[:3] * 255).astype(uint8)` (truncated, not rounded); entry i is the colour
    Depth Anything V2's 8-bit map value i is drawn with."""
    import matplotlib

    return (matplotlib.colormaps["Spectral_r"](np.arange(256))[:, :3] * 255).astype(np.uint8)


def decode_spectral_depth(rgb: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """uint8 [H, W, 3] Spectral_r pseudo-colour -> float32 [H, W] depth in [0, 1], 0 = near.

    SIFThinker's `load_depth_from_color` (data_generation/depth_est.py, GRPO qwen_module.py): each
    pixel becomes the index k of the nearest palette colour (Euclidean in RGB, `spectral_r_palette`;
    ties to the lower index) and depth = 1 - k / 255. The maps are Depth Anything V2's relative
    disparity (large = near) min-max scaled to 0..255 and drawn with Spectral_r, so 1 - k/255 puts
    near at 0 and far at 1.
    """
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[-1] < 3:
        raise ValueError(f"depth image: expected [H, W, 3] colours, got shape {a.shape}")
    pixels = a[..., :3].reshape(-1, 3).astype(np.int32)
    palette = spectral_r_palette().astype(np.int32)
    index = np.empty(len(pixels), np.int32)
    for start in range(0, len(pixels), chunk):  # [chunk, 256] distances at a time
        d = ((pixels[start:start + chunk, None, :] - palette[None]) ** 2).sum(-1)
        index[start:start + chunk] = d.argmin(-1)
    return (1.0 - index.reshape(a.shape[:2]).astype(np.float32) / 255.0).astype(np.float32)


def encode_spectral_depth(depth: np.ndarray) -> np.ndarray:
    """float [H, W] depth in [0, 1] (0 = near) -> uint8 [H, W, 3], the Spectral_r picture SIFThinker shows
    the model as its depth image: palette index k = round((1 - depth) * 255) (`spectral_r_palette`), the
    inverse of `decode_spectral_depth` on the 256 levels. Used for the two-image prompt when a source
    has a depth map but no stored depth picture (built-in scenes, TFDS builds). Values outside [0, 1]
    are clipped; ValueError for a non-2-D array or NaN."""
    d = np.asarray(depth, np.float32)
    if d.ndim != 2:
        raise ValueError(f"depth map: expected float [H, W], got shape {d.shape}")
    if np.isnan(d).any():
        raise ValueError("depth map: holds NaN")
    index = np.round((1.0 - np.clip(d, 0.0, 1.0)) * 255.0).astype(np.int64)
    return spectral_r_palette()[index]


def is_grey(rgb: np.ndarray, tolerance: int = GREY_TOLERANCE) -> bool:
    """True when every pixel's three channels differ by at most `tolerance` (SIFThinker's test)."""
    a = np.asarray(rgb).astype(np.int32)
    return bool(np.abs(a[..., 0] - a[..., 1]).max(initial=0) <= tolerance
                and np.abs(a[..., 1] - a[..., 2]).max(initial=0) <= tolerance)


def load_depth(source: str | os.PathLike | bytes | BinaryIO) -> np.ndarray:
    """A depth-map image -> float32 [H, W] in [0, 1].

    * 16-bit grey (I;16*, or I with values in 0..65535): value / 65535; 8-bit grey: value / 255
      (sif_jax's own depth PNGs, `records.save_depth_png`: the stored value is the depth, 0 = near).
    * Colour (RGB / RGBA / palette): SIF-50K's Spectral_r pseudo-colour maps, decoded as SIFThinker
      does (`decode_spectral_depth`: nearest palette colour k, depth = 1 - k/255, 0 = near).
    * Colour whose three channels are equal within `GREY_TOLERANCE` (a grey map saved as RGB, as
      SIFThinker's depth script writes with `--grayscale`): channel 0 / 255, *not* inverted — what
      SIFThinker's decoder does. Those maps hold disparity, so here 1 = near, the opposite of the
      colour maps; SIFThinker keeps this quirk and so do we, to read the same numbers it trained on.

    No EXIF transpose (depth maps are read as stored).

    Raises:
      ValueError: float or out-of-range 32-bit samples, another mode, or undecodable data.
    """
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(bytes(source))
    try:
        with Image.open(source) as im:
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA")
            if im.mode in ("LA",):
                im = im.convert("L")
            mode = im.mode
            a = np.asarray(im)
    except UnidentifiedImageError as e:
        raise ValueError(f"depth image: cannot decode ({e})") from None
    if a.ndim == 3:
        if a.dtype != np.uint8 or a.shape[-1] < 3:
            raise ValueError(f"depth image: unsupported mode {mode!r} (expected grey or 8-bit RGB)")
        if is_grey(a[..., :3]):
            return (a[..., 0].astype(np.float32) / 255.0).astype(np.float32)
        return decode_spectral_depth(a[..., :3])
    if mode == "1":
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return (a.astype(np.float32) / 255.0).astype(np.float32)
    if mode in _SIXTEEN_BIT_MODES:
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"depth image: mode {mode!r} samples in [{a.min()}, {a.max()}] are outside [0, 65535]")
        return (a.astype(np.float32) / 65535.0).astype(np.float32)
    raise ValueError(f"depth image: unsupported mode {mode!r} (expected 8- or 16-bit grayscale)")


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
