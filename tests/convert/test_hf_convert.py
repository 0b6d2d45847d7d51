"""load_hf_checkpoint / save_hf_checkpoint: layouts, sharding, ties, dtypes and errors."""

import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest

from sif_jax.convert.hf import load_hf_checkpoint, save_hf_checkpoint
from sif_jax.convert.safetensors_io import SafetensorsFile, write_safetensors
from sif_jax.model.config import get_preset
from sif_jax.model.vlm import init_params


def assert_trees_equal(a, b):
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    assert len(flat_a) == len(flat_b)
    for path, leaf in flat_a:
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_b[path]), err_msg=str(path))


def _rewrite(src_dir, dst_dir, edit):
    """Copies a checkpoint directory, passing its tensors through `edit`."""
    shutil.copytree(src_dir, dst_dir)
    st = SafetensorsFile(os.path.join(src_dir, "model.safetensors"))
    tensors = edit([(k, st.get(k)) for k in st.keys()])
    write_safetensors(os.path.join(dst_dir, "model.safetensors"), tensors)


@pytest.mark.parametrize("shard_bytes", [5 * 2**30, 100_000])
def test_roundtrip_is_exact(hf_tiny_dir, tmp_path, shard_bytes):
    config, params = load_hf_checkpoint(hf_tiny_dir)
    save_hf_checkpoint(config, params, tmp_path, max_shard_bytes=shard_bytes)
    sharded = os.path.exists(tmp_path / "model.safetensors.index.json")
    assert sharded == (shard_bytes < 2**20)
    config2, params2 = load_hf_checkpoint(tmp_path)
    assert config2 == config
    assert_trees_equal(params, params2)


def test_released_and_new_key_layouts_load_the_same(hf_tiny_dir, tmp_path):
    released = SafetensorsFile(os.path.join(hf_tiny_dir, "model.safetensors"))
    assert any(k.startswith("visual.") for k in released.keys())
    assert any(k.startswith("model.layers.") for k in released.keys())

    def to_new_layout(tensors):  # the prefixes Qwen2_5_VLForConditionalGeneration uses in memory
        def rename(k):
            if k.startswith("visual."):
                return "model." + k
            if k.startswith("model."):
                return "model.language_model." + k[len("model."):]
            return k

        return [(rename(k), v) for k, v in tensors]

    _rewrite(hf_tiny_dir, tmp_path / "new", to_new_layout)
    new_names = SafetensorsFile(tmp_path / "new" / "model.safetensors").keys()
    assert any(k.startswith("model.language_model.") for k in new_names)
    assert_trees_equal(load_hf_checkpoint(hf_tiny_dir)[1], load_hf_checkpoint(tmp_path / "new")[1])


def test_tied_preset_roundtrips_without_lm_head(tmp_path):
    config = get_preset("tiny")
    params = init_params(config, jax.random.key(0))
    save_hf_checkpoint(config, params, tmp_path)
    names = SafetensorsFile(tmp_path / "model.safetensors").keys()
    assert "lm_head.weight" not in names
    config2, params2 = load_hf_checkpoint(tmp_path)
    assert config2.text.tie_word_embeddings
    assert_trees_equal(params, params2)


def test_bfloat16_checkpoint_and_dtype_choice(hf_tiny_dir, tmp_path):
    config, params = load_hf_checkpoint(hf_tiny_dir, dtype="bfloat16")
    leaves = jax.tree.leaves(params)
    assert all(x.dtype == ml_dtypes.bfloat16 for x in leaves)
    assert config.param_dtype == "bfloat16"
    save_hf_checkpoint(config, params, tmp_path)
    st = SafetensorsFile(tmp_path / "model.safetensors")
    assert {e["dtype"] for e in st.entries.values()} == {"BF16"}
    config2, params2 = load_hf_checkpoint(tmp_path)  # torch_dtype=bfloat16 -> kept
    assert config2.param_dtype == "bfloat16"
    assert_trees_equal(params, params2)
    _, as_f32 = load_hf_checkpoint(tmp_path, dtype="float32")
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(as_f32))


def test_unknown_tensor_is_named(hf_tiny_dir, tmp_path):
    _rewrite(hf_tiny_dir, tmp_path / "ckpt", lambda t: t + [("model.visual.extra_head.weight", np.zeros(3))])
    with pytest.raises(ValueError, match="model.visual.extra_head.weight"):
        load_hf_checkpoint(tmp_path / "ckpt")


def test_missing_tensor_is_named(hf_tiny_dir, tmp_path):
    _rewrite(hf_tiny_dir, tmp_path / "ckpt", lambda t: [x for x in t if "layers.1.mlp.up_proj" not in x[0]])
    with pytest.raises(ValueError, match="text/layers_1/mlp/up_proj/kernel"):
        load_hf_checkpoint(tmp_path / "ckpt")


def test_misshaped_tensor_is_named(hf_tiny_dir, tmp_path):
    def shrink(tensors):
        return [(k, v[:-1] if k.endswith("layers.0.self_attn.k_proj.weight") else v) for k, v in tensors]

    _rewrite(hf_tiny_dir, tmp_path / "ckpt", shrink)
    with pytest.raises(ValueError, match=r"layers\.0\.self_attn\.k_proj\.weight.*shape"):
        load_hf_checkpoint(tmp_path / "ckpt")


def test_missing_directory_and_shard_errors(hf_tiny_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf_checkpoint(tmp_path / "nope")
    config, params = load_hf_checkpoint(hf_tiny_dir)
    save_hf_checkpoint(config, params, tmp_path / "sharded", max_shard_bytes=100_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    os.remove(tmp_path / "sharded" / sorted(set(index["weight_map"].values()))[-1])
    with pytest.raises(FileNotFoundError, match="missing"):
        load_hf_checkpoint(tmp_path / "sharded")


def test_safetensors_reader_matches_the_reference_library(hf_tiny_dir):
    from safetensors.numpy import load_file

    path = os.path.join(hf_tiny_dir, "model.safetensors")
    ours = SafetensorsFile(path)
    theirs = load_file(path)
    assert set(ours.keys()) == set(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(ours.get(k), v)


def test_scan_layout_roundtrips_through_hf_safetensors_bit_exact(hf_tiny_dir, tmp_path):
    """HF -> stacked params (scan_layers) -> HF safetensors -> per-layer params: the same bits."""
    config, params = load_hf_checkpoint(hf_tiny_dir)
    scan_config, stacked = load_hf_checkpoint(hf_tiny_dir, scan_layers=True)
    assert scan_config == config.replace(scan_layers=True)
    assert "layers" in stacked["text"] and "blocks" in stacked["visual"]
    np.testing.assert_array_equal(stacked["text"]["layers"]["mlp"]["up_proj"]["kernel"][1],
                                  params["text"]["layers_1"]["mlp"]["up_proj"]["kernel"])
    save_hf_checkpoint(scan_config, stacked, tmp_path / "out")
    original = SafetensorsFile(os.path.join(hf_tiny_dir, "model.safetensors"))
    written = SafetensorsFile(os.path.join(tmp_path / "out", "model.safetensors"))
    assert sorted(written.keys()) == sorted(original.keys())
    _, back = load_hf_checkpoint(tmp_path / "out")
    assert_trees_equal(back, params)
