"""SFT only: the warm-up on built-in traces, saved as a run directory GRPO can start from.

    python -m sif_jax.train --config=configs/sft.py        (= --config=configs/grpo.py:phase=sft)
    python -m sif_jax.train --config=configs/grpo.py --config.init_checkpoint=workdir/sft
"""

import ml_collections

from configs import grpo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/grpo.py with phase=sft; `arg` takes its other options (e.g. "runlocal")."""
    return grpo.get_config(",".join(filter(None, ("phase=sft", arg))))
