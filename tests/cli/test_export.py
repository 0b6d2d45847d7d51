"""`python -m sif_jax.export`: HF and orbax exports reload to exactly the trained params."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from sif_jax.checkpoint import load_run_params
from sif_jax.checkpoint_loading import load_model
from sif_jax.convert.hf import load_hf_checkpoint
from tests.cli.conftest import run_cli


def _assert_same(a, b):
    fa, ta = jax.tree_util.tree_flatten_with_path(a)
    fb, tb = jax.tree_util.tree_flatten_with_path(b)
    assert ta == tb
    for (path, x), (_, y) in zip(fa, fb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, path
        np.testing.assert_array_equal(x, y, err_msg=str(path))


def test_export_hf_round_trip(cli_files, tmp_path):
    out = tmp_path / "hf"
    proc = run_cli("export", f"--checkpoint={cli_files['run']}", "--format=hf", f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "preprocessor_config.json", "sif_jax.json"]
    assert "model.safetensors" in proc.stdout
    config, params, _ = load_run_params(cli_files["run"])
    hf_config, hf_params = load_hf_checkpoint(out)
    assert hf_config.vision == config.vision and hf_config.text == config.text
    _assert_same(hf_params, params)
    assert json.loads((out / "sif_jax.json").read_text())["tokenizer"] == "builtin"
    loaded = load_model(str(out))  # the CLIs take the export as --checkpoint, tokenizer included
    assert loaded.info.kind == "hf" and type(loaded.tokenizer).__name__ == "BuiltinTokenizer"
    # A second export into the same directory needs --overwrite.
    again = run_cli("export", f"--checkpoint={cli_files['run']}", "--format=hf", f"--out={out}")
    assert again.returncode != 0 and again.stderr.startswith("error: ") and "--overwrite" in again.stderr


def test_export_orbax_round_trip(cli_files, tmp_path):
    out = tmp_path / "params"
    proc = run_cli("export", f"--checkpoint={cli_files['run']}", "--format=orbax", f"--out={out}", "--dtype=bfloat16")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "sif_jax.json").read_text())
    assert meta["format"] == "orbax" and meta["dtype"] == "bfloat16" and meta["source"]["step"] == 2
    config, params, _ = load_run_params(cli_files["run"])
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(str(out / "params"))
    _assert_same(restored, jax.tree.map(lambda x: np.asarray(x).astype(jax.numpy.bfloat16), params))
    loaded = load_model(str(out))
    assert loaded.info.kind == "params" and loaded.config.param_dtype == "bfloat16"
    assert loaded.config.text == config.text
    _assert_same(loaded.params, restored)
