"""HF safetensors <-> params for Qwen3-VL: exact round trips and clear errors."""

import json
import os

import jax
import numpy as np
import pytest

from sif_jax.convert.safetensors_io import SafetensorsFile, write_safetensors
from sif_jax.model.qwen3_vl.config import get_preset
from sif_jax.model.qwen3_vl.convert import hf_tensors, load_hf_checkpoint, save_hf_checkpoint
from sif_jax.model.qwen3_vl.model import init_params


def _flat(params):
    return {"/".join(k.key for k in keys): np.asarray(v) for keys, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_fixture_round_trip_is_exact_and_keeps_hf_names(qwen3_loaded, qwen3_dir, tmp_path):
    config, params = qwen3_loaded
    save_hf_checkpoint(config, params, tmp_path, max_shard_bytes=200_000)
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    reloaded_config, reloaded = load_hf_checkpoint(tmp_path)
    assert reloaded_config == config
    a, b = _flat(params), _flat(reloaded)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    original = SafetensorsFile(os.path.join(qwen3_dir, "model.safetensors"))
    ours = dict(hf_tensors(config, params))
    assert sorted(ours) == sorted(original.keys())
    for name in original.keys():
        np.testing.assert_array_equal(ours[name], original.get(name), err_msg=name)


def test_stacked_layout_round_trip(qwen3_dir, tmp_path):
    config, stacked = load_hf_checkpoint(qwen3_dir, scan_layers=True)
    assert stacked["text"]["layers"]["q_proj"]["kernel"].shape[0] == config.text.num_layers
    assert stacked["visual"]["blocks"]["qkv"]["kernel"].shape[0] == config.vision.depth
    save_hf_checkpoint(config, stacked, tmp_path)
    _, per_layer = load_hf_checkpoint(tmp_path)
    _, original = load_hf_checkpoint(qwen3_dir)
    a, b = _flat(per_layer), _flat(original)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_tied_preset_writes_no_lm_head(tmp_path):
    config = get_preset("qwen3_vl_tiny")
    params = init_params(config, jax.random.key(0))
    save_hf_checkpoint(config, params, tmp_path)
    names = SafetensorsFile(os.path.join(tmp_path, "model.safetensors")).keys()
    assert "lm_head.weight" not in names and "model.language_model.embed_tokens.weight" in names
    loaded_config, loaded = load_hf_checkpoint(tmp_path)
    assert loaded_config == config
    a, b = _flat(params), _flat(loaded)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _rewrite(src, dst, change):
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f, open(os.path.join(dst, "config.json"), "w") as g:
        json.dump(json.load(f), g)
    st = SafetensorsFile(os.path.join(src, "model.safetensors"))
    write_safetensors(os.path.join(dst, "model.safetensors"), change([(n, st.get(n)) for n in st.keys()]))


def test_unknown_missing_and_misshaped_tensors_are_named(qwen3_dir, tmp_path):
    _rewrite(qwen3_dir, tmp_path / "a", lambda t: t + [("model.visual.extra.weight", np.zeros(3, np.float32))])
    with pytest.raises(ValueError, match="model.visual.extra.weight"):
        load_hf_checkpoint(tmp_path / "a")
    _rewrite(qwen3_dir, tmp_path / "b", lambda t: [x for x in t if x[0] != "model.visual.pos_embed.weight"])
    with pytest.raises(ValueError, match="visual/pos_embed"):
        load_hf_checkpoint(tmp_path / "b")
    _rewrite(qwen3_dir, tmp_path / "c", lambda t: [(n, a[:-1] if n.endswith("q_norm.weight") else a) for n, a in t])
    with pytest.raises(ValueError, match="q_norm.weight"):
        load_hf_checkpoint(tmp_path / "c")
