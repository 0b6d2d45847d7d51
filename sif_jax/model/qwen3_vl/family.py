"""Qwen3-VL as a `sif_jax.model.family.ModelFamily` (the code lives in this sub-package).

Differences from Qwen2.5-VL that the interface carries: 16 px patches (`pixel_values` [N, 1536]),
a 32 px visual-token cell (`config.vision.cell_size`), the released preprocessor's normalisation
(`image.process_image`), and vision arrays `patch_positions`, `frame_segments`, `pos_indices`,
`pos_weights` (the learned position table's bilinear taps) instead of `window_segments`. The chat
template and its control ids are Qwen2.5-VL's. DeepStack features are added inside the forward
pass, so the shared KV cache (`sif_jax.model.cache`) prefills with them and decodes text only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sif_jax.batch import as_arrays
from sif_jax.model.family import BaseFamily, ImageInputs
from sif_jax.model.qwen3_vl import model as qwen3_vl
from sif_jax.model.qwen3_vl.config import PRESETS, Qwen3VLConfig


def _identity(name: str) -> str:
    return name


class Qwen3VLFamily(BaseFamily):
    name = "qwen3_vl"
    display_name = "Qwen3-VL"
    hf_model_types = ("qwen3_vl",)
    position_axes = 3

    @property
    def presets(self) -> Mapping[str, Callable[[], Qwen3VLConfig]]:
        return PRESETS

    def from_hf_config(self, hf: Mapping[str, Any], **overrides: Any) -> Qwen3VLConfig:
        return Qwen3VLConfig.from_hf_config(hf, **overrides)

    def module(self, config: Qwen3VLConfig) -> qwen3_vl.Qwen3VL:
        return qwen3_vl.Qwen3VL(config)

    def prepare_inputs(self, config, input_ids, attention_mask=None, pixel_values=None, **arrays):
        """`model.prepare_inputs` (arrays: `image_grid_thw`, `pad_patches_to`, `batch_images`)."""
        return qwen3_vl.prepare_inputs(config, input_ids, attention_mask, pixel_values, **arrays)

    def model_inputs(self, inputs):
        return qwen3_vl.model_inputs(inputs)

    def dummy_inputs(self, config):
        return qwen3_vl._dummy_inputs(config)

    def cell_size(self, config: Qwen3VLConfig) -> int:
        """32 px: patch_size (16) x spatial_merge_size (2)."""
        return config.vision.cell_size

    def tokenizer_ids(self, config: Qwen3VLConfig) -> dict[str, int]:
        """Tokenizer attribute -> the id the config expects there."""
        return {"image_pad_id": config.image_token_id, "eos_id": config.eos_token_id,
                "vision_start_id": config.vision_start_token_id, "vision_end_id": config.vision_end_token_id}

    def process_example_image(self, rgb, boxes, config, *, min_pixels, max_pixels, focus=None) -> ImageInputs:
        """The released preprocessor (`image.process_image`: resize to multiples of 32 px, mean = std
        = 0.5) at `min_pixels` / `max_pixels`; region cells of `boxes`, or of SAYO's token-grid focus
        area (bool [r, c]) when `focus` is given, on the 32 px cell grid.

        Returns pixel_values float32 [gh * gw, 1536] and image_grid_thw int64 [1, 3] in `arrays`,
        gh * gw / 4 image tokens, region cells bool [gh * gw / 4] and gh * gw patches."""
        from sif_jax.data.regions import focus_region_mask, image_region_mask
        from sif_jax.model.qwen3_vl.image import process_image

        vision = config.vision
        img = process_image(rgb, vision, min_pixels, max_pixels)
        grid = img.image_grid_thw[0]
        if focus is not None:
            region = focus_region_mask(focus, grid, vision.cell_size, vision.spatial_merge_size)
        else:
            region = image_region_mask(boxes, grid, vision.cell_size, vision.spatial_merge_size)
        return ImageInputs({"pixel_values": img.pixel_values, "image_grid_thw": img.image_grid_thw},
                           int(np.prod(grid)) // vision.merge_unit, region, int(np.prod(grid)))

    def chat_prompt(self, tokenizer, question, num_image_tokens, system):
        """Qwen's chat template (`sif_jax.data.tokenizer.chat_prompt`; the same control ids as Qwen2.5-VL)."""
        from sif_jax.data.tokenizer import chat_prompt

        return chat_prompt(tokenizer, question, num_image_tokens, system)

    def text_rope(self, config, positions):
        """Qwen3-VL's interleaved M-RoPE tables (`qwen3_vl.language.interleaved_mrope_cos_sin`)."""
        from sif_jax.model.qwen3_vl.language import interleaved_mrope_cos_sin

        return interleaved_mrope_cos_sin(positions, config.text)

    def pixel_bounds(self, config):
        """Qwen3-VL's released preprocessor_config.json: size {"shortest_edge": 65536, "longest_edge":
        16777216}, i.e. min 256 x 256 and max 4096 x 4096 pixels (`QWEN3_VL_MIN_PIXELS` /
        `QWEN3_VL_MAX_PIXELS`). transformers maps qwen3_vl to `Qwen2VLImageProcessor`, whose class
        defaults (56 * 56, 28 * 28 * 1280) are Qwen2-VL's; the checkpoint's file overrides them."""
        from sif_jax.model.qwen3_vl.config import QWEN3_VL_MAX_PIXELS, QWEN3_VL_MIN_PIXELS

        return QWEN3_VL_MIN_PIXELS, QWEN3_VL_MAX_PIXELS

    def chat_prompt_parts(self, tokenizer, parts, system):
        """Qwen's chat template over text and images in order (`tokenizer.chat_prompt_parts`), e.g.
        SIFThinker's RGB + depth turn."""
        from sif_jax.data.tokenizer import chat_prompt_parts

        return chat_prompt_parts(tokenizer, parts, system)

    def collate_images(self, config, input_ids, attention_mask, examples, pad_to):
        """Batched-image layout: one image per row, each padded to `pad_to` patches.

        Returns `prepare_inputs(..., batch_images=True)` without `rope_deltas` (the KV cache continues
        from the largest position): positions int32 [3, R, L], pixel_values float32 [R, P, 1536],
        patch_positions int32 [R, P, 2], frame_segments int32 [R, P] (-1 = padding), pos_indices
        [R, P, 4], pos_weights float32 [R, P, 4], image_token_index int32 [R, L]; plus image_grid_thw
        int64 [R, 3] and num_patches (the real patches of all rows). Raises ValueError when `pad_to`
        is not a multiple of merge_unit (4) or an image does not fit it."""
        pixel_values = np.concatenate([ex["pixel_values"] for ex in examples])
        image_grid_thw = np.concatenate([np.asarray(ex["image_grid_thw"]).reshape(-1, 3) for ex in examples])
        if pad_to % config.vision.merge_unit:
            raise ValueError(
                f"collate: patch bucket {pad_to} is not a multiple of merge_unit={config.vision.merge_unit}")
        batch = qwen3_vl.prepare_inputs(config, input_ids, attention_mask, pixel_values, image_grid_thw,
                                        pad_patches_to=pad_to, batch_images=True)
        batch.pop("rope_deltas", None)
        batch["image_grid_thw"] = image_grid_thw.astype(np.int64)
        batch["num_patches"] = np.int32(pixel_values.shape[0])
        return batch

    def model_view(self, config, rgb, inputs):
        """(the image resized as the model saw it, uint8 [H, W, 3]; its visual-token grid (rows, cols)) for a
        one-row `ModelInputs` (or `prepare_inputs` dict)."""
        from sif_jax.data.image import resize_image

        grid_thw = np.asarray(as_arrays(inputs)["image_grid_thw"])[0]
        m, ps = config.vision.spatial_merge_size, config.vision.patch_size
        shown = resize_image(np.asarray(rgb), int(grid_thw[1]) * ps, int(grid_thw[2]) * ps)
        return shown, (int(grid_thw[1]) // m, int(grid_thw[2]) // m)

    def load_tokenizer(self, path):
        """The Qwen tokenizer.json at `path` (`sif_jax.data.tokenizer.HFTokenizer`; Qwen3-VL keeps
        Qwen2.5-VL's vocabulary and control tokens)."""
        from sif_jax.data.tokenizer import HFTokenizer

        return HFTokenizer(path)

    def hf_rules(self):
        """Qwen3-VL's tensor rules (`convert._COMPILED`); its names need no canonical mapping
        (released files and transformers' `save_pretrained` share `model.visual.*` /
        `model.language_model.*`)."""
        from sif_jax.model.qwen3_vl.convert import _COMPILED

        return _COMPILED, _identity


FAMILY = Qwen3VLFamily()
