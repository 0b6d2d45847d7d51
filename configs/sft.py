"""SFT only: the warm-up on built-in traces, saved as a run directory GRPO can start from.

    python -m sif_jax.train --config=configs/sft.py
    python -m sif_jax.train --config=configs/grpo.py --config.init_checkpoint=workdir/sft
"""

import importlib.util
import os

import ml_collections


def _grpo_config() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("sif_grpo_config", os.path.join(os.path.dirname(__file__), "grpo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config() -> ml_collections.ConfigDict:
    c = _grpo_config()
    c.workdir = "workdir/sft"
    c.sft.steps = 600
    c.grpo.steps = 0
    return c
