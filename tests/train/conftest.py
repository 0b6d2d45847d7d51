"""A tiny, fast run config for the training tests (112 px scenes, short completions)."""

import importlib.util
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def load_grpo_config():
    spec = importlib.util.spec_from_file_location("grpo_config", os.path.join(ROOT, "configs", "grpo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def tiny_run_config(workdir: str):
    c = load_grpo_config()
    c.workdir = workdir
    c.data.image_size = 112
    c.data.length_buckets = (128, 384)
    c.data.patch_buckets = (64,)
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
