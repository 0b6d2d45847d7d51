"""Qwen3-VL in Flax Linen: vision tower with DeepStack, Qwen3 decoder with interleaved M-RoPE.

Public API (mirrors the Qwen2.5-VL modules of `sif_jax.model`):
  config:  Qwen3VLConfig (.from_hf_config / .to_hf_config), get_preset, PRESETS
  model:   Qwen3VL (Linen module; __call__, embed, decode_step), prepare_inputs, model_inputs,
           forward, init_params, abstract_boxed_params, param_logical_axes, lm_head_kernel
  cache:   prefill, decode_step (sif_jax.model.cache.KVCache)
  convert: load_hf_checkpoint, save_hf_checkpoint, hf_tensors
  image:   process_image (the released preprocessor: factor 32, mean = std = 0.5)
"""

from sif_jax.model.qwen3_vl.config import PRESETS, Qwen3VLConfig, get_preset
from sif_jax.model.qwen3_vl.model import (
    Qwen3VL,
    forward,
    init_params,
    lm_head_kernel,
    model_inputs,
    param_logical_axes,
    prepare_inputs,
)

__all__ = ["PRESETS", "Qwen3VL", "Qwen3VLConfig", "forward", "get_preset", "init_params", "lm_head_kernel",
           "model_inputs", "param_logical_axes", "prepare_inputs"]
