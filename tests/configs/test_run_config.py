"""sif_jax.run_config: the ConfigDict read once into frozen, self-checking dataclasses."""

import dataclasses
import subprocess
import sys

import ml_collections
import pytest

from configs import grpo
from sif_jax import run_config, train
from sif_jax.rl.rewards import REWARD_NAMES
from tests.train.conftest import ROOT


def test_every_field_of_the_config_file_reaches_the_typed_config():
    c = grpo.get_config()
    rc = run_config.build(c, check_files=False)
    assert rc.model.preset == c.model and rc.model.attention_backend == c.attention_backend
    assert (rc.model.scan_layers, rc.model.remat_policy, rc.model.freeze_vision, rc.model.vision_init) == (
        c.scan_layers, c.remat_policy, c.freeze_vision, c.vision_init)
    assert (rc.workdir, rc.seed, rc.log_every) == (c.workdir, c.seed, c.log_every)
    assert (rc.checkpointing.every, rc.checkpointing.max_to_keep) == (c.checkpoint_every, c.max_checkpoints)
    for section in ("data", "sft", "grpo", "lora", "mesh", "distributed"):
        typed = getattr(rc, section)
        for key, value in c[section].items():
            got = getattr(typed, key)
            assert got == (tuple(value) if isinstance(value, list | tuple) else value), f"{section}.{key}"
    assert dict(rc.rewards.weights) == {k: c.rewards[k] for k in REWARD_NAMES}
    assert rc.rewards.top_fraction == c.rewards.top_fraction
    assert rc.mesh.axes() == {"data": -1, "fsdp": 1, "tensor": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        rc.grpo.steps = 3  # type: ignore[misc]


def test_grpo_settings_read_the_typed_config():
    c = grpo.get_config()
    c.grpo.vocab_chunk = 512
    c.grpo.top_k = 7
    c.rewards.iou = 0.5
    rc = run_config.build(c, check_files=False)
    g, rewards = train.grpo_settings(rc)
    assert (g.vocab_chunk, g.sampling.top_k, g.sampling.max_new_tokens) == (512, 7, rc.grpo.max_new_tokens)
    assert rewards.weights["iou"] == 0.5 and rewards.top_fraction == rc.rewards.top_fraction
    assert train.grpo_settings(c) == (g, rewards)  # a ConfigDict is read the same way


@pytest.mark.parametrize("field, value, message", [
    ("grpo.vocab_chunk", 0, r"config\.grpo\.vocab_chunk=0: must be >= 1"),
    ("sft.answer_weight", 0.0, r"config\.sft\.answer_weight=0\.0: must be > 0"),
    ("checkpoint_every", 0, r"config\.checkpoint_every=0: must be >= 1"),
    ("mesh.fsdp", 0, r"config\.mesh\.fsdp=0: must be -1 or >= 1"),
    ("lora.rank", -1, r"config\.lora\.rank=-1"),
    ("remat_policy", "some", r"config\.remat_policy='some'"),
    ("data.source", "nope:x", r"config\.data\.source='nope:x': unknown source"),
])
def test_each_section_checks_itself(field, value, message):
    c = grpo.get_config()
    section, _, key = field.rpartition(".")
    (c[section] if section else c)[key] = value
    with pytest.raises(ValueError, match=message):
        run_config.from_config_dict(c)


def test_unknown_and_missing_fields():
    d = grpo.get_config().to_dict()
    d["grpo"]["grup_size"] = 4
    with pytest.raises(ValueError, match=r"config\.grpo\.grup_size=4: unknown field; did you mean grpo\.'group_size'"):
        run_config.from_config_dict(d)
    d = grpo.get_config().to_dict()
    d["data"]["eval_seed"] = 0  # a removed field is an error, not silently ignored
    with pytest.raises(ValueError, match=r"config\.data\.eval_seed=0: unknown field"):
        run_config.from_config_dict(ml_collections.ConfigDict(d))
    d = grpo.get_config().to_dict()
    del d["rewards"]["depth"]
    with pytest.raises(ValueError, match=r"config\.rewards\.depth=None: missing reward weight"):
        run_config.from_config_dict(d)
    d = grpo.get_config().to_dict()
    del d["grpo"]["share_prompts"], d["remat_policy"]  # older configs: the defaults
    rc = run_config.from_config_dict(d)
    assert rc.grpo.share_prompts is True and rc.model.remat_policy == "none"


@pytest.mark.parametrize("config", ["configs/grpo.py", "configs/grpo.py:runlocal"])  # a variant after the file
def test_cli_names_the_closest_field_of_a_typo(tmp_path, config):
    result = subprocess.run(
        [sys.executable, "-m", "sif_jax.train", f"--config={config}", "--config.grpo.grup_size=4",
         f"--config.workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "did you mean --config.grpo.group_size?" in result.stderr.strip().splitlines()[-1]
