"""Training entry point: config validation, exact resume, preemption."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from sif_jax import train
from sif_jax.checkpoint import PreemptionGuard, load_run_params, run_checkpoint_meta
from sif_jax.run_config import validate_config

from .conftest import ROOT, tiny_run_config

COMPARED = ("reward", "loss", "kl_mean", "entropy", "completion_length", "grad_norm", "format_mean",
            "region_attention_mean", "tas_mean")


def read_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("field, value, message", [
    ("grpo.group_size", 1, r"config\.grpo\.group_size=1: GRPO needs >= 2"),
    ("model", "big", r"config\.model='big'"),
    ("grpo.micro_batch_prompts", 3, r"config\.grpo\.micro_batch_prompts=3: must divide"),
    ("data.image_size", 100, r"config\.data\.image_size=100"),
    ("rewards.top_fraction", 0.0, r"config\.rewards\.top_fraction=0\.0"),
    ("attention_backend", "cuda", r"config\.attention_backend='cuda'"),
])
def test_bad_config_fails_before_compiling_naming_the_field(tiny_config, field, value, message):
    section, _, key = field.rpartition(".")
    target = tiny_config if not section else tiny_config[section]
    target[key] = value
    with pytest.raises(ValueError, match=message):
        validate_config(tiny_config)


def test_cli_reports_a_bad_config_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sif_jax.train", "--config=configs/grpo.py", "--config.grpo.group_size=1",
         f"--config.workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == "error: config.grpo.group_size=1: GRPO needs >= 2 samples per prompt"
    assert "Traceback" not in result.stderr


def test_resume_gives_identical_metrics(tmp_path):
    straight = tiny_run_config(str(tmp_path / "straight"))
    train.run(straight)
    resumed = tiny_run_config(str(tmp_path / "resumed"))
    train.run(resumed, stop_after=3)  # as if preempted after step 3 (checkpoint saved)
    assert len(read_rows(resumed.workdir)) == 3
    train.run(resumed)  # a new run in the same workdir picks up at step 4
    a, b = read_rows(straight.workdir), read_rows(resumed.workdir)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b, strict=True):
        for key in COMPARED:
            np.testing.assert_allclose(rb[key], ra[key], rtol=1e-6, atol=1e-7, err_msg=f"step {ra['step']} {key}")
    _, meta, _, step = run_checkpoint_meta(resumed.workdir)
    assert step == 6 and "history" not in meta  # the metric rows live in metrics.jsonl only

    # A new run can start from this run directory (init_checkpoint): it gets the trained params.
    follow_up = tiny_run_config(str(tmp_path / "follow_up"))
    follow_up.init_checkpoint = straight.workdir
    validate_config(follow_up)
    _, params = train._setup(follow_up)
    _, saved, _ = load_run_params(straight.workdir)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_sigterm_is_turned_into_a_flag():
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested
    assert signal.getsignal(signal.SIGTERM) is not guard._handler
