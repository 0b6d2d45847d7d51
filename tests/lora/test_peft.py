"""PEFT adapter directories: our exporter's output is what `peft` loads onto the HF base with the
same logits as our merged model (fixture: make_peft_fixture.py), and it reads back exactly."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.convert.safetensors_io import SafetensorsFile
from sif_jax.lora import DEFAULT_TARGETS, LoraConfig, adapter_specs, flatten, merge
from sif_jax.lora_peft import load_peft_adapter, peft_tensors, save_peft_adapter
from sif_jax.model.layout import to_layout
from sif_jax.model.vlm import abstract_boxed_params, forward
from tests.lora.make_peft_fixture import ALPHA, RANK, fixture_adapters

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "peft_tiny_qwen2_5_vl")
LORA = LoraConfig(rank=RANK, alpha=ALPHA)


@pytest.fixture(scope="module")
def base(hf_tiny_dir):
    return load_hf_checkpoint(hf_tiny_dir)


def test_fixture_is_our_exporters_output(base):
    config, _ = base
    specs = adapter_specs(abstract_boxed_params(config), LORA)
    ours = dict(peft_tensors(fixture_adapters(specs)))
    saved = SafetensorsFile(os.path.join(FIXTURE, "adapter_model.safetensors"))
    assert sorted(saved.keys()) == sorted(ours)
    for key, value in ours.items():
        np.testing.assert_array_equal(saved.get(key), value)
    q = "base_model.model.model.language_model.layers.0.self_attn.q_proj"
    h = config.text
    assert ours[f"{q}.lora_A.weight"].shape == (RANK, h.hidden_size)
    assert ours[f"{q}.lora_B.weight"].shape == (h.num_heads * h.head_dim, RANK)
    o = "base_model.model.model.language_model.layers.2.self_attn.o_proj"
    assert ours[f"{o}.lora_A.weight"].shape == (RANK, h.num_heads * h.head_dim)
    with open(os.path.join(FIXTURE, "adapter_config.json")) as f:
        cfg = json.load(f)
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["use_rslora"]) == ("LORA", RANK, ALPHA, False)


@pytest.mark.parametrize("scan", [False, True])
def test_peft_loaded_adapter_matches_our_merged_logits(base, hf_tiny_io, scan):
    config, params = base
    config = config.replace(scan_layers=scan)
    params = to_layout(params, config)
    specs = adapter_specs(abstract_boxed_params(config), LORA)
    adapters = load_peft_adapter(FIXTURE, specs, LORA)
    merged = merge(jax.tree.map(np.asarray, params), adapters, LORA.scale)
    logits, _ = forward(merged, config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                        hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
    recorded = np.load(os.path.join(FIXTURE, "peft_logits.npz"))
    valid = hf_tiny_io["attention_mask"].astype(bool)
    err = np.abs(np.asarray(logits) - recorded["logits"])[valid].max()
    change = np.abs(recorded["logits"] - recorded["base_logits"])[valid].max()
    assert change > 0.1, "the fixture adapter must move the logits"
    assert err <= 1e-4, f"max |ours - peft| = {err}"
    assert np.abs(np.asarray(logits) - recorded["merged_logits"])[valid].max() <= 1e-4


def test_save_then_load_in_either_layout_is_exact(base, tmp_path):
    config, _ = base
    per_layer = adapter_specs(abstract_boxed_params(config), LORA)
    adapters = fixture_adapters(per_layer, seed=3)
    save_peft_adapter(adapters, LORA, str(tmp_path / "a"))
    back = flatten(load_peft_adapter(str(tmp_path / "a"), per_layer, LORA))
    for path, ab in flatten(adapters).items():
        for k in "ab":
            np.testing.assert_array_equal(back[path][k], ab[k])
    stacked_config = config.replace(scan_layers=True)
    stacked = flatten(load_peft_adapter(str(tmp_path / "a"), adapter_specs(abstract_boxed_params(stacked_config),
                                                                          LORA), LORA))
    q = stacked["text/layers/q_proj/kernel"]["a"]
    assert q.shape[0] == config.text.num_layers
    np.testing.assert_array_equal(q[1], flatten(adapters)["text/layers_1/q_proj/kernel"]["a"])
    # and a stacked tree writes the same files as the per-layer one
    save_peft_adapter({"text": {"layers": {k: v for k, v in _nest_stacked(stacked).items()}}}, LORA,
                      str(tmp_path / "b"))
    a, b = (SafetensorsFile(str(tmp_path / d / "adapter_model.safetensors")) for d in "ab")
    assert sorted(a.keys()) == sorted(b.keys())
    for key in a.keys():
        np.testing.assert_array_equal(a.get(key), b.get(key))


def _nest_stacked(flat):
    out = {}
    for path, ab in flat.items():
        node = out
        *parents, last = path.split("/")[2:]
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = ab
    return out


def test_older_transformers_module_names_load_too(base, tmp_path):
    """Adapters trained on transformers < 4.52 name modules `model.layers.*`."""
    config, _ = base
    specs = adapter_specs(abstract_boxed_params(config), LORA)
    src = SafetensorsFile(os.path.join(FIXTURE, "adapter_model.safetensors"))
    from sif_jax.convert.safetensors_io import write_safetensors

    os.makedirs(tmp_path / "old")
    shutil.copy(os.path.join(FIXTURE, "adapter_config.json"), tmp_path / "old")
    write_safetensors(str(tmp_path / "old" / "adapter_model.safetensors"),
                      [(k.replace("model.language_model.", "model."), src.get(k)) for k in src.keys()])
    old, new = (flatten(load_peft_adapter(d, specs, LORA)) for d in (str(tmp_path / "old"), FIXTURE))
    for path in new:
        np.testing.assert_array_equal(old[path]["b"], new[path]["b"])


def test_mismatched_adapters_are_named(base, tmp_path):
    config, _ = base
    specs = adapter_specs(abstract_boxed_params(config), LORA)
    with pytest.raises(ValueError, match=r"r=4 but lora.rank=8"):
        load_peft_adapter(FIXTURE, specs, LoraConfig(rank=8, alpha=ALPHA))
    with pytest.raises(ValueError, match=r"lora_alpha=8.0 but lora.alpha=16.0"):
        load_peft_adapter(FIXTURE, specs, LoraConfig(rank=RANK, alpha=16.0))
    only_q = adapter_specs(abstract_boxed_params(config), LoraConfig(RANK, ALPHA, targets=(r"q_proj",)))
    with pytest.raises(ValueError, match="k_proj.lora_A.weight.*does not select"):
        load_peft_adapter(FIXTURE, only_q, LORA)
    vision = adapter_specs(abstract_boxed_params(config),
                           LoraConfig(RANK, ALPHA, targets=(*DEFAULT_TARGETS, r"visual/.*/qkv")))
    with pytest.raises(ValueError, match=r"no lora_A for model.visual.blocks.0.attn.qkv"):
        load_peft_adapter(FIXTURE, vision, LoraConfig(RANK, ALPHA))
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter directory"):
        load_peft_adapter(str(tmp_path), specs, LORA)
