"""Vision-language models in pure-functional Flax Linen, one family per architecture behind one interface.

`sif_jax.model.family` holds the interface (`ModelFamily`) and the registry keyed by each config's
`family` attribute: Qwen2.5-VL ("qwen2_5_vl": config.py, vlm.py, vision.py, language.py, ...),
Qwen3-VL ("qwen3_vl": the `qwen3_vl` sub-package) and LLaVA-1.5 ("llava": the `llava` sub-package).
`forward`, `get_preset` and `load_hf_checkpoint` dispatch on the config (or on config.json's model_type).
"""

from sif_jax.model.config import ModelConfig
from sif_jax.model.family import (
    family_for_hf_config,
    family_of,
    forward,
    get_family,
    get_preset,
    load_hf_checkpoint,
    presets,
    save_hf_checkpoint,
)

__all__ = ["ModelConfig", "family_for_hf_config", "family_of", "forward", "get_family", "get_preset",
           "load_hf_checkpoint", "presets", "save_hf_checkpoint"]
