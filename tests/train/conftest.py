"""A tiny, fast run config for the training tests (112 px scenes, short completions)."""

import os

import pytest

from configs import grpo

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def tiny_run_config(workdir: str):
    """configs/grpo.py:runlocal, smaller still: no SFT or held-out evaluation, 6 GRPO steps of
    2 prompts x 2 samples of 6 tokens, a checkpoint every step."""
    c = grpo.get_config("runlocal")
    c.workdir = workdir
    c.data.length_buckets = (128, 384)
    c.data.eval_examples = 0
    c.sft.steps = 0
    c.grpo.steps = 6
    c.grpo.prompts_per_step = 2
    c.grpo.micro_batch_prompts = 1
    c.grpo.group_size = 2
    c.grpo.max_new_tokens = 6
    c.checkpoint_every = 1
    c.log_every = 100
    return c


@pytest.fixture
def tiny_config(tmp_path):
    return tiny_run_config(str(tmp_path / "run"))
