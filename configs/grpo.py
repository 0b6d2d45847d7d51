"""GRPO on the built-in spatial task with the tiny model (the default run)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "tiny"
    return config
