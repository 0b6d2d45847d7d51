"""GRPO-SIF on Qwen2.5-VL-3B: configs/grpo_7b.py with the 3B preset.

    python -m sif_jax.plan --config=configs/grpo_3b.py --topology=v5litepod-16
"""

import importlib.util
import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("sif_grpo_7b_config",
                                                  os.path.join(os.path.dirname(__file__), "grpo_7b.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.model = "qwen2_5_vl_3b"
    c.workdir = "workdir/grpo_3b"
    return c
