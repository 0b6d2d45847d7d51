"""Host-side (NumPy) inputs of LLaVA-1.5: image processing, token layout, positions, chat template.

Image processing is HF's `CLIPImageProcessor` as the released LLaVA-1.5 processor configures it:
resize so the shortest side is S (= `vision.image_size`, 336) and the longer side
int(S * long / short), bicubic (PIL); center crop S x S (top = (h - S) // 2, left = (w - S) // 2);
rescale by 1/255 (in float64, then float32); normalise with the CLIP mean/std (float32).

Token layout (HF `LlavaProcessor`): the prompt holds one `<image>` token per image, which the
processor expands to `image_seq_length` (576) copies; the decoder replaces them by the projected
features. Positions are 1-D: the count of real tokens before each one (left padding gets 0), as
HF's `generate` computes them from the attention mask; int32 [1, B, L].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from sif_jax.batch import ModelInputs, as_arrays
from sif_jax.model.llava.config import LlavaConfig

# HF's llava-1.5 chat template, one image and one user turn: "USER: <image>\n{text} ASSISTANT:".
USER = "USER: "
ASSISTANT = "ASSISTANT:"
IMAGE = "<image>"


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the shorter side `size` and the longer int(size * long / short) (HF's
    `get_resize_output_image_size(default_to_square=False)`)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image has size {height}x{width}; both sides must be positive")
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of the centre crop of a resized (height, width) image (HF's `center_crop`)."""
    return (height - size) // 2, (width - size) // 2


def process_image(rgb: np.ndarray, config: LlavaConfig) -> np.ndarray:
    """uint8 [H, W, 3] -> pixel_values float32 [3, S, S] exactly as HF's CLIPImageProcessor (module doc)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3]; got {rgb.dtype} {rgb.shape}")
    crop = model_view(rgb, config)
    scaled = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(config.image_mean, np.float32)
    std = np.asarray(config.image_std, np.float32)
    return ((scaled - mean) / std).transpose(2, 0, 1)


def model_view(rgb: np.ndarray, config: LlavaConfig) -> np.ndarray:
    """uint8 [S, S, 3]: the resized, centre-cropped image `process_image` normalises."""
    size = config.vision.image_size
    h, w = resized_size(rgb.shape[0], rgb.shape[1], size)
    resized = np.asarray(Image.fromarray(np.asarray(rgb, np.uint8)).resize((w, h), resample=Image.Resampling.BICUBIC))
    top, left = crop_offsets(h, w, size)
    return resized[top : top + size, left : left + size]


def crop_boxes(boxes: np.ndarray, height: int, width: int, config: LlavaConfig) -> np.ndarray:
    """Boxes normalised to the original image (float [k, 4] x1, y1, x2, y2) -> normalised to the
    S x S crop the model sees (clipped to [0, 1]; a box outside the crop gets zero area)."""
    size = config.vision.image_size
    h, w = resized_size(height, width, size)
    top, left = crop_offsets(h, w, size)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x = (boxes[:, [0, 2]] * w - left) / size
    y = (boxes[:, [1, 3]] * h - top) / size
    return np.clip(np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1), 0.0, 1.0).astype(np.float32)


def chat_prompt_text(question: str, system: str | None = None) -> str:
    """The text of HF's llava-1.5 chat template for one image and one user turn, with the generation
    prompt: `USER: <image>\\n{question} ASSISTANT:` (`{system} ` first when given)."""
    head = f"{system} " if system else ""
    return f"{head}{USER}{IMAGE}\n{question} {ASSISTANT}"


def chat_prompt(tokenizer: Any, question: str, num_image_tokens: int, system: str | None = None) -> list[int]:
    """Token ids of `chat_prompt_text` with `<image>` expanded to `num_image_tokens` image ids
    (`tokenizer.image_pad_id`), BOS first when the tokenizer has a `bos_id` (LLaMA's tokenizer adds
    it). The text pieces are encoded separately with `tokenizer.encode`, which never parses control
    tokens, so a question cannot add image tokens. Raises ValueError for num_image_tokens < 0."""
    if num_image_tokens < 0:
        raise ValueError(f"chat_prompt: num_image_tokens={num_image_tokens} must be >= 0")
    head = f"{system} {USER}" if system else USER
    tail = f"\n{question} {ASSISTANT}"
    bos = getattr(tokenizer, "bos_id", None)
    ids = [] if bos is None else [int(bos)]
    return ids + list(tokenizer.encode(head)) + [tokenizer.image_pad_id] * num_image_tokens + list(
        tokenizer.encode(tail))


def positions_from_mask(attention_mask: np.ndarray) -> np.ndarray:
    """int32 [1, B, L]: cumsum(mask) - 1 on real tokens, 0 on padding."""
    mask = np.asarray(attention_mask) > 0
    return np.where(mask, np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)[None]


def prepare_inputs(
    config: LlavaConfig,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    pixel_values: np.ndarray | None = None,
    *,
    image_mask: np.ndarray | None = None,
    **unused: Any,
) -> dict[str, np.ndarray]:
    """HF-processor arrays -> the arrays `Llava.__call__` consumes.

    Args:
      input_ids: int [B, L] with `image_seq_length` image tokens per image; attention_mask {0,1}.
      pixel_values: float [images, 3, S, S] or None.

    Returns:
      input_ids, attention_mask int32 [B, L], positions int32 [1, B, L], pixel_values float32.

    Raises ValueError (naming the counts) when the image tokens and images do not match, for an id
    outside the vocabulary, or for Qwen-only arrays (`image_grid_thw`) given with values.
    """
    if unused.get("image_grid_thw") is not None:
        raise ValueError("image_grid_thw is a Qwen input; LLaVA takes pixel_values [images, 3, S, S] only")
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length]; got shape {input_ids.shape}")
    attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {attention_mask.shape}, input_ids {input_ids.shape}")
    vocab = config.text.vocab_size
    if (input_ids >= vocab).any() or (input_ids < 0).any():
        bad = input_ids[(input_ids >= vocab) | (input_ids < 0)][0]
        raise ValueError(f"input_ids holds token {bad}, outside [0, vocab_size={vocab})")
    is_image = (input_ids == config.image_token_id) if image_mask is None else np.asarray(image_mask, bool)
    n_image = int(np.sum(is_image & (attention_mask > 0)))
    inputs = {"input_ids": input_ids.astype(np.int32), "attention_mask": attention_mask.astype(np.int32),
              "positions": positions_from_mask(attention_mask)}
    if image_mask is not None:
        inputs["image_mask"] = is_image
    if pixel_values is None:
        if n_image:
            raise ValueError(f"input_ids hold {n_image} image tokens but no pixel_values")
        return inputs
    pixel_values = np.asarray(pixel_values, np.float32)
    v = config.vision
    if pixel_values.ndim != 4 or pixel_values.shape[1:] != (v.num_channels, v.image_size, v.image_size):
        raise ValueError(f"pixel_values has shape {pixel_values.shape}; expected [images, {v.num_channels}, "
                         f"{v.image_size}, {v.image_size}]")
    want = pixel_values.shape[0] * config.image_seq_length
    if n_image != want:
        raise ValueError(
            f"image features and image tokens do not match: input_ids hold {n_image} image tokens "
            f"(id {config.image_token_id}), {pixel_values.shape[0]} images give {want} features "
            f"({config.image_seq_length} each)")
    inputs["pixel_values"] = pixel_values
    return inputs


MODEL_INPUTS = ("input_ids", "attention_mask", "positions", "pixel_values", "image_token_index", "image_mask")


def model_inputs(inputs: ModelInputs | Mapping[str, Any]) -> dict[str, Any]:
    """The subset of `prepare_inputs`' output (or of a `sif_jax.batch.ModelInputs`) that `Llava.__call__` takes."""
    inputs = as_arrays(inputs)
    return {k: inputs[k] for k in MODEL_INPUTS if k in inputs}


def dummy_inputs(config: LlavaConfig) -> dict[str, np.ndarray]:
    """A one-image batch that touches every parameter, for `init`."""
    ids = np.array([[config.bos_token_id] + [config.image_token_id] * config.image_seq_length
                    + [config.eos_token_id]], np.int32)
    v = config.vision
    pixels = np.zeros((1, v.num_channels, v.image_size, v.image_size), np.float32)
    return model_inputs(prepare_inputs(config, ids, None, pixels))


def image_grid(config: LlavaConfig) -> tuple[int, int]:
    """(rows, cols) of visual tokens per image: the CLIP patch grid (24 x 24 at 336 px / 14 px)."""
    return config.vision.grid, config.vision.grid


def region_cells(boxes: Sequence[Sequence[float]], config: LlavaConfig) -> np.ndarray:
    """bool [image_seq_length]: the visual tokens whose 14 px cell overlaps one of `boxes`
    (normalised to the crop) with positive area; the class token (strategy "full") is never inside."""
    from sif_jax.data.regions import region_cell_mask

    mask = region_cell_mask(boxes, image_grid(config), config.vision.cell_size, normalized=True)
    if config.vision_feature_select_strategy == "full":
        mask = np.concatenate([[False], mask])
    return mask
