"""GRPO-SIF on Qwen2.5-VL-3B: configs/grpo_7b.py with the 3B preset.

    python -m sif_jax.plan --config=configs/grpo_3b.py --topology=v5litepod-16
"""

import ml_collections

from configs import grpo_7b


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = grpo_7b.get_config(arg)
    c.model = "qwen2_5_vl_3b"
    c.workdir = "workdir/grpo_3b"
    return c
