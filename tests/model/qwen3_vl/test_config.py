"""Qwen3-VL config: HF config.json both ways, presets' sizes, validation."""

import json
import os

import jax
import pytest

from sif_jax.model.qwen3_vl.config import PRESETS, Qwen3VLConfig, get_preset
from sif_jax.model.qwen3_vl.model import count_params, init_params


def test_from_hf_config_reads_the_fixture(qwen3_dir):
    with open(os.path.join(qwen3_dir, "config.json")) as f:
        config = Qwen3VLConfig.from_hf_config(json.load(f))
    assert config.vision.deepstack_visual_indexes == (0, 2)
    assert config.vision.num_position_embeddings == 36 and config.vision.patch_size == 16
    assert config.text.head_dim == 16 and config.text.mrope_section == (4, 2, 2)
    assert config.text.num_kv_heads == 2 and not config.text.tie_word_embeddings
    assert config.vision.cell_size == 32


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_to_hf_config_round_trips(name):
    config = get_preset(name)
    assert Qwen3VLConfig.from_hf_config(config.to_hf_config(), dtype=config.dtype,
                                        param_dtype=config.param_dtype) == config


@pytest.mark.parametrize("name", ["qwen3_vl_2b", "qwen3_vl_4b", "qwen3_vl_8b"])
def test_preset_parameter_counts_equal_hf(qwen3_dir, name):
    with open(os.path.join(qwen3_dir, "released_param_counts.json")) as f:
        expected = json.load(f)[name]
    config = get_preset(name)
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    assert count_params(shapes) == expected


def test_invalid_configs_name_the_field():
    tiny = get_preset("qwen3_vl_tiny")
    with pytest.raises(ValueError, match="mrope_section"):
        tiny.replace(text=tiny.text.__class__(**{**tiny.text.__dict__, "mrope_section": (4, 4, 4)}))
    with pytest.raises(ValueError, match="deepstack_visual_indexes"):
        tiny.replace(vision=tiny.vision.__class__(**{**tiny.vision.__dict__, "deepstack_visual_indexes": (7,)}))
    with pytest.raises(ValueError, match="num_position_embeddings"):
        tiny.replace(vision=tiny.vision.__class__(**{**tiny.vision.__dict__, "num_position_embeddings": 50}))
    with pytest.raises(ValueError, match="model_type"):
        Qwen3VLConfig.from_hf_config({"model_type": "qwen2_5_vl"})
    with pytest.raises(ValueError, match="unknown"):
        get_preset("qwen3_vl_72b")
