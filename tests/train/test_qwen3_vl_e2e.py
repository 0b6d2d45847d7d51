"""Qwen3-VL tiny end to end on CPU: SFT and GRPO steps with `sif_jax.train`, then `sif_jax.evaluate`
with AdaptVis decoding on the run."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import run_cli
from tests.train.conftest import tiny_run_config


@pytest.fixture(scope="module")
def qwen3_vl_run(tmp_path_factory):
    from sif_jax import train

    c = tiny_run_config(str(tmp_path_factory.mktemp("qwen3_vl") / "run"))
    c.model = "qwen3_vl_tiny"
    c.data.length_buckets = (160, 448)  # 112 px -> 128 px: 16 image tokens of 32 px
    c.data.min_pixels = 56 * 56  # below Qwen3-VL's released 256 x 256 floor, to keep the images small
    c.sft.steps = 2
    c.sft.batch_size = 2
    c.grpo.steps = 2
    c.grpo.prompts_per_step = 1
    c.grpo.max_new_tokens = 4
    train.run(c)
    return c.workdir


def test_qwen3_vl_tiny_trains_sft_and_grpo(qwen3_vl_run):
    with open(f"{qwen3_vl_run}/sft_metrics.jsonl") as f:
        sft = [json.loads(line) for line in f]
    with open(f"{qwen3_vl_run}/metrics.jsonl") as f:
        grpo = [json.loads(line) for line in f]
    assert len(sft) == 2 and sft[0]["sft_loss"] > 0
    assert len(grpo) == 2 and grpo[0]["completion_length"] > 0
    assert grpo[0]["tas_mean"] > 0  # region masks reach the Qwen3-VL image tokens


def test_qwen3_vl_tiny_evaluates_with_adaptvis(qwen3_vl_run, tmp_path):
    out = tmp_path / "report.json"
    proc = run_cli("evaluate", "--config=configs/eval.py", f"--config.checkpoint={qwen3_vl_run}",
                   "--config.data.image_size=112",
                   "--config.data.min_pixels=3136", "--config.max_new_tokens=4", "--config.data.length_buckets=(160,)",
                   "--config.data.num_examples=2", "--config.batch_size=2", "--config.decoding=adaptvis",
                   "--config.threshold=0.3", f"--config.output={out}")
    assert proc.returncode == 0, proc.stderr
    assert "qwen3_vl_tiny" in proc.stdout
    report = json.loads(out.read_text())
    assert report["decoding"]["mode"] == "adaptvis"
    rows = report["rows"]
    assert len(rows) == 2 and all(r["alpha"] == (0.5 if r["confidence"] < 0.3 else 1.5) for r in rows)
