"""The Qwen2.5-VL vision-language model in pure-functional Flax Linen."""

from sif_jax.model.config import ModelConfig, get_preset

__all__ = ["ModelConfig", "get_preset"]
