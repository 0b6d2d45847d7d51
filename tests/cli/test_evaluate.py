"""`python -m sif_jax.evaluate` end to end: built-in test split, VSR and WhatsUp files."""

from __future__ import annotations

import json

from sif_jax.data.questions import FAMILIES
from sif_jax.data.sources import whatsup_relation
from sif_jax.evaluation import EvalResult, format_table
from tests.cli.conftest import eval_args, run_cli, run_many

ROW_FIELDS = {"id", "prompt_id", "answer", "output", "prediction", "accuracy", "tas", "format", "format_reason",
              "final_iou", "confidence", "confidence_step", "completion_tokens", "family", "relation", "split"}


def test_evaluate_builtin_report(cli_files, tmp_path):
    out = tmp_path / "report.json"
    proc = run_cli("evaluate", *eval_args(cli_files["run"], "--config.data.num_examples=4", "--config.batch_size=4",
                                          f"--config.output={out}"))
    assert proc.returncode == 0, proc.stderr
    assert "overall" in proc.stdout and "by family:" in proc.stdout and "accuracy" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report) >= {"summary", "rows", "checkpoint", "decoding", "config"}
    s = report["summary"]
    assert s["examples"] == 4 and s["examples_with_boxes"] == 4
    for key in ("accuracy", "tas", "format", "final_iou"):
        assert isinstance(s[key], float) and 0.0 <= s[key] <= 1.0, key
    assert s["accuracy_by_family"] and set(s["accuracy_by_family"]) <= set(FAMILIES)
    assert set(s["accuracy_by_split"]) <= {"familiar", "unfamiliar"}
    assert set(s["groups"]) == {"family", "relation", "split"}
    assert sum(g["examples"] for g in s["groups"]["family"].values()) == 4
    assert len(report["rows"]) == 4 and all(ROW_FIELDS <= set(r) for r in report["rows"])
    assert report["checkpoint"]["kind"] == "run" and report["checkpoint"]["step"] == 2
    assert report["decoding"] == {"mode": "greedy"}


def test_evaluate_vsr_and_whatsup_files(cli_files, tmp_path):
    vsr_out, wu_out = tmp_path / "vsr.json", tmp_path / "whatsup.json"
    files = f"{cli_files['image_dir']}"
    vsr, wu = run_many([
        # VSR: 3 records in batches of 2 (the last batch is padded; padding rows are not reported).
        ("evaluate", eval_args(cli_files["run"], f"--config.data.source=vsr:{cli_files['vsr']}:{files}",
                               "--config.batch_size=2", f"--config.output={vsr_out}")),
        # WhatsUp with AdaptVis decoding; every row records the alpha it used.
        ("evaluate", eval_args(cli_files["run"], f"--config.data.source=whatsup:{cli_files['whatsup']}:{files}",
                               "--config.batch_size=2", "--config.decoding=adaptvis", "--config.threshold=0.3",
                               f"--config.output={wu_out}")),
    ], workers=2)
    assert vsr.returncode == 0, vsr.stderr
    assert "by relation:" in vsr.stdout and "n/a" in vsr.stdout
    s = json.loads(vsr_out.read_text())["summary"]
    assert s["examples"] == 3 and s["examples_with_boxes"] == 0
    assert s["tas"] is None and s["final_iou"] is None  # VSR has no boxes
    assert set(s["accuracy_by_relation"]) == {"left of", "behind", "above"}
    assert s["accuracy_by_family"] == {"vsr": s["accuracy"]}
    assert wu.returncode == 0, wu.stderr
    report = json.loads(wu_out.read_text())
    assert report["decoding"] == {"mode": "adaptvis", "alpha_low": 0.5, "alpha_high": 1.5, "threshold": 0.3}
    rows = report["rows"]
    assert len(rows) == 2 and all(r["alpha"] in (0.5, 1.5) for r in rows)
    # alpha follows the reported confidence: the alpha = 1 probe's, read at the first answer token
    assert all(r["alpha"] == (0.5 if r["confidence"] < 0.3 else 1.5) for r in rows)
    assert rows[0]["answer"] == "A cube to the left of a sphere" and rows[0]["relation"] == "left of"


def test_summary_without_boxes_and_table():
    rows = [{"accuracy": 1.0, "tas": None, "format": 0.0, "final_iou": None, "family": "vsr", "relation": "on",
             "split": "vsr"},
            {"accuracy": 0.0, "tas": 0.8, "format": 1.0, "final_iou": 0.5, "family": "count", "relation": "",
             "split": "familiar"}]
    s = EvalResult(rows).summary()
    assert s["tas"] == 0.8 and s["final_iou"] == 0.5 and s["accuracy"] == 0.5
    assert s["accuracy_by_relation"] == {"on": 1.0}
    assert s["groups"]["family"]["vsr"]["tas"] is None
    assert "n/a" in format_table(s)
    assert "tas" not in EvalResult(rows[:1]).summary()  # train.py reads .get("tas", 0)
    assert whatsup_relation("A mug to the left of a plate") == "left of"
    assert whatsup_relation("A mug on a table") == "on"
