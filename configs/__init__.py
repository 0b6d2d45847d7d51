"""Run configs (ml_collections `get_config(arg)` files), importable from the checkout root.

    python -m sif_jax.train --config=configs/grpo.py                    # the default run
    python -m sif_jax.train --config=configs/grpo.py:phase=sft,runlocal # a variant, chosen by argument
    from configs import grpo; config = grpo.get_config("runlocal")      # the same in Python

The part after ':' is passed to `get_config` (`common.parse_arg` reads it). Commands and imports
run from the checkout root, which puts `configs` on the path (`python -m` adds the working directory).
"""
