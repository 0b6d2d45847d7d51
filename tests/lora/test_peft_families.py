"""PEFT adapter directories for the LLaVA-1.5 and Qwen3-VL families: module names of each family's
transformers model, exact export -> import round trips in both layer layouts, and (LLaVA) the
adapter `peft` loads onto the HF base gives our merged model's logits (fixture:
make_peft_fixture.py export/record llava)."""

import os

import numpy as np
import pytest

from sif_jax.convert.safetensors_io import SafetensorsFile
from sif_jax.lora import LoraConfig, adapter_specs, flatten, merge
from sif_jax.lora_peft import PREFIX, load_peft_adapter, peft_tensors, save_peft_adapter
from sif_jax.model import family
from tests.lora.make_peft_fixture import ALPHA, LLAVA_TARGETS, RANK, fixture_adapters

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
LLAVA_PEFT = os.path.join(FIXTURES, "peft_tiny_llava")
QWEN3_TARGETS = (
    r"^text/layers(_\d+)?/(q_proj|k_proj|v_proj|o_proj|mlp/(gate_proj|up_proj|down_proj))/kernel$",
    r"^visual/blocks(_\d+)?/(qkv|proj|linear_fc1|linear_fc2)/kernel$",
    r"^visual/(merger|deepstack_merger_\d+)/linear_fc\d/kernel$",
)


def specs_of(config, targets):
    return adapter_specs(family.family_of(config).abstract_boxed_params(config),
                         LoraConfig(rank=RANK, alpha=ALPHA, targets=targets))


def modules(tensors):
    return {k[len(PREFIX):].rsplit(".lora_", 1)[0] for k, _ in tensors}


# Linear module names of transformers 5.23's models for these tiny configs (named_modules()).
LLAVA_MODULES = {"model.vision_tower.encoder.layers.0.self_attn.out_proj",
                 "model.vision_tower.encoder.layers.2.mlp.fc2",
                 "model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2",
                 "model.language_model.layers.0.self_attn.q_proj", "model.language_model.layers.1.mlp.down_proj",
                 "lm_head"}
QWEN3_MODULES = {"model.visual.blocks.0.attn.qkv", "model.visual.blocks.0.attn.proj",
                 "model.visual.blocks.0.mlp.linear_fc1",
                 "model.visual.merger.linear_fc2", "model.visual.deepstack_merger_list.1.linear_fc1",
                 "model.language_model.layers.0.self_attn.o_proj", "model.language_model.layers.0.mlp.gate_proj"}


@pytest.mark.parametrize("preset,targets,expected", [("llava_1_5_tiny", LLAVA_TARGETS, LLAVA_MODULES),
                                                     ("qwen3_vl_tiny", QWEN3_TARGETS, QWEN3_MODULES)])
def test_export_import_round_trip_in_both_layouts_with_hf_module_names(tmp_path, preset, targets, expected):
    per_layer = family.get_preset(preset).replace(scan_layers=False)
    stacked = per_layer.replace(scan_layers=True)
    specs = specs_of(per_layer, targets)
    adapters = fixture_adapters(specs, seed=3)
    tensors = peft_tensors(adapters, per_layer)
    assert expected <= modules(tensors)
    assert len(modules(tensors)) == sum(1 for _ in tensors) // 2
    save_peft_adapter(adapters, LoraConfig(RANK, ALPHA, targets=targets), str(tmp_path), config=per_layer)
    back = flatten(load_peft_adapter(str(tmp_path), specs, LoraConfig(RANK, ALPHA, targets=targets), per_layer))
    want = flatten(adapters)
    assert sorted(back) == sorted(want)
    for path in want:
        for k in "ab":
            np.testing.assert_array_equal(back[path][k], want[path][k])
    # the same directory read into the stacked layout: layer i of each stacked factor
    stacked_specs = specs_of(stacked, targets)
    got = flatten(load_peft_adapter(str(tmp_path), stacked_specs, LoraConfig(RANK, ALPHA, targets=targets), stacked))
    for path, spec in stacked_specs.items():
        if not spec.n_lead:
            np.testing.assert_array_equal(got[path]["a"], want[path]["a"])
            continue
        for i in range(spec.shape[0]):
            per = path.replace("/layers/", f"/layers_{i}/").replace("/blocks/", f"/blocks_{i}/")
            for k in "ab":
                np.testing.assert_array_equal(got[path][k][i], want[per][k])
    # and written again from the stacked layout: the same tensors
    again = dict(peft_tensors(unflatten_stacked(got), stacked))
    for key, value in tensors:
        np.testing.assert_array_equal(again[key], value)


def unflatten_stacked(flat):
    from sif_jax.lora import unflatten

    return unflatten(flat)


def test_a_qwen25_adapter_is_not_read_as_llava(tmp_path):
    config = family.get_preset("llava_1_5_tiny")
    qwen = family.get_preset("tiny")
    lora = LoraConfig(RANK, ALPHA)
    vision = (r"^visual/blocks_\d+/qkv/kernel$",)  # model.visual.blocks.*.attn.qkv: no LLaVA module
    save_peft_adapter(fixture_adapters(specs_of(qwen, vision)), lora, str(tmp_path))
    with pytest.raises(ValueError, match="model.visual.blocks.0.attn.qkv.*does not select"):
        load_peft_adapter(str(tmp_path), specs_of(config, lora.targets), lora, config)


def test_llava_fixture_is_our_exporters_output():
    config, _ = family.load_hf_checkpoint(os.path.join(FIXTURES, "hf_tiny_llava"))
    ours = dict(peft_tensors(fixture_adapters(specs_of(config, LLAVA_TARGETS)), config))
    saved = SafetensorsFile(os.path.join(LLAVA_PEFT, "adapter_model.safetensors"))
    assert sorted(saved.keys()) == sorted(ours)
    for key, value in ours.items():
        np.testing.assert_array_equal(saved.get(key), value)
    out = "base_model.model.model.vision_tower.encoder.layers.0.self_attn.out_proj"
    v = config.vision
    assert ours[f"{out}.lora_A.weight"].shape == (RANK, v.num_heads * v.head_dim)


@pytest.mark.parametrize("scan", [False, True])
def test_peft_loaded_llava_adapter_matches_our_merged_logits(scan):
    config, params = family.load_hf_checkpoint(os.path.join(FIXTURES, "hf_tiny_llava"), scan_layers=scan)
    with np.load(os.path.join(FIXTURES, "hf_tiny_llava", "io.npz")) as data:
        io = dict(data)
    lora = LoraConfig(RANK, ALPHA, targets=LLAVA_TARGETS)
    adapters = load_peft_adapter(LLAVA_PEFT, specs_of(config, LLAVA_TARGETS), lora, config)
    merged = merge(params, adapters, lora.scale)
    logits, _ = family.forward(merged, config, io["input_ids"], io["attention_mask"], io["pixel_values"])
    recorded = np.load(os.path.join(LLAVA_PEFT, "peft_logits.npz"))
    valid = io["attention_mask"].astype(bool)
    err = np.abs(np.asarray(logits) - recorded["logits"])[valid].max()
    change = np.abs(recorded["logits"] - recorded["base_logits"])[valid].max()
    assert change > 1e-2 and err <= 1e-4, (err, change)
