"""Qwen2.5-VL as a `sif_jax.model.family.ModelFamily` (the code lives in config/vlm/vision/...)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sif_jax.batch import as_arrays
from sif_jax.model import vlm
from sif_jax.model.config import PRESETS, ModelConfig
from sif_jax.model.family import BaseFamily, ImageInputs


class Qwen25VLFamily(BaseFamily):
    name = "qwen2_5_vl"
    display_name = "Qwen2.5-VL"
    hf_model_types = ("qwen2_5_vl",)
    position_axes = 3

    @property
    def presets(self) -> Mapping[str, Callable[[], ModelConfig]]:
        return PRESETS

    def from_hf_config(self, hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
        return ModelConfig.from_hf_config(hf, **overrides)

    def module(self, config: ModelConfig) -> vlm.Qwen25VL:
        return vlm.Qwen25VL(config)

    def prepare_inputs(self, config, input_ids, attention_mask=None, pixel_values=None, **arrays):
        return vlm.prepare_inputs(config, input_ids, attention_mask, pixel_values, **arrays)

    def model_inputs(self, inputs):
        return vlm.model_inputs(inputs)

    def dummy_inputs(self, config):
        return vlm._dummy_inputs(config)

    def cell_size(self, config: ModelConfig) -> int:
        return config.vision.cell_size

    def tokenizer_ids(self, config: ModelConfig) -> dict[str, int]:
        """Tokenizer attribute -> the id the config expects there."""
        return {"image_pad_id": config.image_token_id, "eos_id": config.eos_token_id,
                "vision_start_id": config.vision_start_token_id, "vision_end_id": config.vision_end_token_id}

    def process_example_image(self, rgb, boxes, config, *, min_pixels, max_pixels, focus=None) -> ImageInputs:
        """focus: SAYO's token-grid focus area (bool [r, c]) marks the region instead of `boxes`."""
        from sif_jax.data.image import process_image
        from sif_jax.data.regions import focus_region_mask, image_region_mask

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
        from sif_jax.data.tokenizer import chat_prompt

        return chat_prompt(tokenizer, question, num_image_tokens, system)

    def chat_prompt_parts(self, tokenizer, parts, system):
        """Qwen's chat template over text and images in order (`tokenizer.chat_prompt_parts`), e.g.
        SIFThinker's RGB + depth turn."""
        from sif_jax.data.tokenizer import chat_prompt_parts

        return chat_prompt_parts(tokenizer, parts, system)

    def collate_images(self, config, input_ids, attention_mask, examples, pad_to):
        """Batched-image layout: one image per row, each padded to `pad_to` patches."""
        pixel_values = np.concatenate([ex["pixel_values"] for ex in examples])
        image_grid_thw = np.concatenate([np.asarray(ex["image_grid_thw"]).reshape(-1, 3) for ex in examples])
        if pad_to % config.vision.merge_unit:
            raise ValueError(
                f"collate: patch bucket {pad_to} is not a multiple of merge_unit={config.vision.merge_unit}")
        batch = vlm.prepare_inputs(config, input_ids, attention_mask, pixel_values, image_grid_thw,
                                   pad_patches_to=pad_to, batch_images=True)
        batch["image_grid_thw"] = image_grid_thw.astype(np.int64)
        batch["num_patches"] = np.int32(pixel_values.shape[0])
        return batch

    def model_view(self, config, rgb, inputs):
        """(the image resized as the model saw it, uint8 [H, W, 3]; its visual-token grid (rows, cols)) for a
        one-row `ModelInputs` (or `prepare_inputs` dict)."""
        from sif_jax.data.image import resize_image

        grid_thw = np.asarray(as_arrays(inputs)["image_grid_thw"])[0]
        m, ps = config.vision.spatial_merge_size, config.vision.patch_size
        shown = resize_image(rgb, int(grid_thw[1]) * ps, int(grid_thw[2]) * ps)
        return shown, (int(grid_thw[1]) // m, int(grid_thw[2]) // m)

    def load_tokenizer(self, path):
        """The Qwen tokenizer.json at `path` (`sif_jax.data.tokenizer.HFTokenizer`)."""
        from sif_jax.data.tokenizer import HFTokenizer

        return HFTokenizer(path)

    def hf_rules(self):
        from sif_jax.convert.hf import _COMPILED, canonical_name

        return _COMPILED, canonical_name


FAMILY = Qwen25VLFamily()
