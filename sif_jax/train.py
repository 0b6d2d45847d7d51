"""`python -m sif_jax.train --config=configs/grpo.py`: GRPO training of the VLM.

The training loop (sampler, scoring, rewards, GRPO loss, sharding, checkpoints) is being built;
until it lands this entry point validates the config and says so plainly.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    if _CONFIG.value is None:
        raise app.UsageError("--config=configs/grpo.py is required")
    print("sif_jax.train: GRPO training is not implemented yet (model, kernel and data are). "
          "Config read:\n" + str(_CONFIG.value), file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    app.run(main)
