"""LLaVA-1.5 as a `sif_jax.model.family.ModelFamily`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sif_jax.model.family import BaseFamily, ImageInputs
from sif_jax.model.llava import inputs as llava_inputs
from sif_jax.model.llava.config import PRESETS, LlavaConfig
from sif_jax.model.llava.model import Llava


class LlavaFamily(BaseFamily):
    name = "llava"
    display_name = "LLaVA"
    hf_model_types = ("llava",)
    position_axes = 1

    @property
    def presets(self) -> Mapping[str, Callable[[], LlavaConfig]]:
        return PRESETS

    def from_hf_config(self, hf: Mapping[str, Any], **overrides: Any) -> LlavaConfig:
        return LlavaConfig.from_hf_config(hf, **overrides)

    def module(self, config: LlavaConfig) -> Llava:
        return Llava(config)

    def prepare_inputs(self, config, input_ids, attention_mask=None, pixel_values=None, **arrays):
        return llava_inputs.prepare_inputs(config, input_ids, attention_mask, pixel_values, **arrays)

    def model_inputs(self, inputs):
        return llava_inputs.model_inputs(inputs)

    def dummy_inputs(self, config):
        return llava_inputs.dummy_inputs(config)

    def cell_size(self, config: LlavaConfig) -> int:
        """14 px: one visual token per CLIP patch of the 336 px crop (a 24 x 24 grid)."""
        return config.vision.cell_size

    def tokenizer_ids(self, config: LlavaConfig) -> dict[str, int]:
        return {"image_pad_id": config.image_token_id, "eos_id": config.eos_token_id}

    def process_example_image(self, rgb, boxes, config, *, min_pixels=None, max_pixels=None,
                              focus=None) -> ImageInputs:
        """CLIP processing (resize, centre crop, normalise); boxes are mapped into the crop before
        the cells are marked. min/max_pixels (Qwen's dynamic resolution) do not apply.

        Raises ValueError for a SAYO `focus` area: its 28 px token grid of the uncropped image has
        no exact mapping onto the centre-cropped 14 px CLIP grid; give boxes instead."""
        if focus is not None:
            raise ValueError("LLaVA-1.5 takes target boxes, not SAYO focus areas (the centre crop has no exact "
                             "mapping of SAYO's token grid); convert focus_area to boxes")
        rgb = np.asarray(rgb)
        pixels = llava_inputs.process_image(rgb, config)
        cropped = llava_inputs.crop_boxes(boxes, rgb.shape[0], rgb.shape[1], config)
        region = llava_inputs.region_cells(cropped, config)
        # One [3, S, S] image: no patch padding, so it counts as one row for the patch buckets.
        return ImageInputs({"pixel_values": pixels[None]}, config.image_seq_length, region, 1)

    def chat_prompt(self, tokenizer, question, num_image_tokens, system):
        return llava_inputs.chat_prompt(tokenizer, question, num_image_tokens, system)

    def collate_images(self, config, input_ids, attention_mask, examples, pad_to):
        """Every image is [3, S, S]: rows' images stack to [R, 3, S, S]; no patch padding."""
        pixel_values = np.concatenate([np.asarray(ex["pixel_values"], np.float32) for ex in examples])
        batch = llava_inputs.prepare_inputs(config, input_ids, attention_mask, pixel_values)
        batch["num_patches"] = np.int32(pixel_values.shape[0])
        return batch

    def model_view(self, config, rgb, inputs):
        """(the S x S centre crop the model saw, uint8; the (24, 24) patch grid). ValueError for strategy
        "full" (its class token is no cell)."""
        if config.vision_feature_select_strategy != "default":
            raise ValueError("a heat-map needs vision_feature_select_strategy='default' (one token per cell)")
        return llava_inputs.model_view(np.asarray(rgb), config), llava_inputs.image_grid(config)

    def load_tokenizer(self, path):
        """The LLaMA-2 tokenizer.json at `path` with LLaVA's `<image>` / `<pad>` (`LlavaTokenizer`)."""
        from sif_jax.model.llava.tokenizer import LlavaTokenizer

        return LlavaTokenizer(path)

    def hf_rules(self):
        from sif_jax.model.llava.convert import COMPILED, canonical_name

        return COMPILED, canonical_name


FAMILY = LlavaFamily()
