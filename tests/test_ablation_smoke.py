"""benchmarks/ablation.py --smoke: every arm and seed trains from one SFT checkpoint and the report is written."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ablation():
    spec = importlib.util.spec_from_file_location("ablation", os.path.join(ROOT, "benchmarks", "ablation.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["ablation"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_mean_std_ci_matches_a_numpy_t_interval():
    ablation = _ablation()
    values = [0.2, 0.5, 0.4]
    s = ablation.mean_std_ci(values)
    mean, std = np.mean(values), np.std(values, ddof=1)
    half = 4.302652729911275 * std / np.sqrt(3)  # t_{0.975, 2}
    assert (s["n"], s["mean"], s["std"]) == (3, pytest.approx(mean), pytest.approx(std))
    assert (s["lo"], s["hi"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert ablation.mean_std_ci([0.3]) == {"n": 1, "mean": 0.3, "std": 0.0, "lo": 0.3, "hi": 0.3}
    with pytest.raises(ValueError, match="no values"):
        ablation.mean_std_ci([])


def test_arms_differ_only_in_their_reward_weights():
    arms = _ablation().ARMS
    a, b, c = arms.values()
    assert a["region_attention"] == 0 and b["region_attention"] == 1
    assert {k: v for k, v in a.items() if k != "region_attention"} == {k: v for k, v in b.items()
                                                                       if k != "region_attention"}
    assert {k for k, v in c.items() if v} == {"region_attention", "sayo_format"}


def test_smoke_run_writes_table_plot_and_json(tmp_path):
    result = _ablation().main(["--smoke", f"--out={tmp_path}"])
    table = (tmp_path / "ablation.md").read_text()
    for arm in ("a: GRPO-SIF", "b: GRPO-SIF + region", "c: SAYO (region + format)", "chance (uniform)", "greedy",
                "adaptvis"):
        assert arm in table
    assert (tmp_path / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "ablation.json").read_text())
    for arm, runs in saved["runs"].items():
        assert len(runs) == 2, arm  # one per seed
        assert all("accuracy" in r["after"] and "accuracy_by_family" in r["after"] for r in runs)
    assert result["table"]["a: GRPO-SIF"]["accuracy"]["n"] == 2
    assert len(result["adaptvis"][0]["grid"]) == 2 and result["adaptvis"][0]["chosen"] in result["adaptvis"][0]["grid"]
