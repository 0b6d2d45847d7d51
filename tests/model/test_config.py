"""ModelConfig: presets, HF config parsing, validation."""

import functools
import json
import os

import jax
import pytest

from sif_jax.model.config import ModelConfig, get_preset
from sif_jax.model.vlm import count_params, init_params, param_logical_axes

# The released config.json of Qwen2.5-VL-7B-Instruct (flat layout, rope_scaling).
RELEASED_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
    "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
    "intermediate_size": 18944, "max_position_embeddings": 128000, "max_window_layers": 28,
    "model_type": "qwen2_5_vl", "num_attention_heads": 28, "num_hidden_layers": 28,
    "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                      "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 152064,
}


@pytest.mark.parametrize("name", ["qwen2_5_vl_3b", "qwen2_5_vl_7b"])
def test_preset_parameter_counts_match_released(name, hf_tiny_dir):
    with open(os.path.join(hf_tiny_dir, "released_param_counts.json")) as f:
        released = json.load(f)[name]  # HF's count of the released config (make_hf_fixture.py)
    config = get_preset(name)
    shapes = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
    ours = count_params(shapes)
    assert abs(ours - released) / released < 0.005, (ours, released)


def test_tiny_preset_is_a_few_hundred_thousand_parameters():
    n = count_params(init_params(get_preset("tiny"), jax.random.key(0)))
    assert 100_000 < n < 1_000_000


def test_small_preset_is_tens_of_millions_with_the_tiny_vocabulary():
    small, tiny = get_preset("small"), get_preset("tiny")
    n = count_params(jax.eval_shape(functools.partial(init_params, small), jax.random.key(0)))
    assert 10_000_000 < n < 50_000_000
    assert small.text.vocab_size == tiny.text.vocab_size  # the built-in tokenizer fits both
    ids = ("image_token_id", "eos_token_id", "pad_token_id", "vision_start_token_id", "vision_end_token_id")
    assert [getattr(small, k) for k in ids] == [getattr(tiny, k) for k in ids]


def test_released_7b_config_parses_to_the_preset():
    parsed = ModelConfig.from_hf_config(RELEASED_7B, dtype="bfloat16", param_dtype="bfloat16")
    assert parsed == get_preset("qwen2_5_vl_7b")


def test_nested_layout_with_rope_parameters(hf_tiny_dir):
    with open(os.path.join(hf_tiny_dir, "config.json")) as f:
        nested = json.load(f)
    assert "text_config" in nested
    config = ModelConfig.from_hf_config(nested)
    assert config.text.num_layers == nested["text_config"]["num_hidden_layers"]
    assert config.text.mrope_section == tuple(nested["text_config"]["rope_parameters"]["mrope_section"])
    assert config.vision.fullatt_block_indexes == tuple(nested["vision_config"]["fullatt_block_indexes"])
    # to_hf_config -> from_hf_config is the identity.
    assert ModelConfig.from_hf_config(config.to_hf_config()) == config


def test_unknown_preset_and_bad_fields_name_the_problem():
    with pytest.raises(ValueError, match="'huge'"):
        get_preset("huge")
    tiny = get_preset("tiny")
    with pytest.raises(ValueError, match=r"text\.num_kv_heads=3"):
        tiny.replace(text=tiny.text.__class__(**{**tiny.text.__dict__, "num_kv_heads": 3}))
    with pytest.raises(ValueError, match=r"image_token_id=5000"):
        tiny.replace(image_token_id=5000)
    with pytest.raises(ValueError, match="model_type='llava'"):
        ModelConfig.from_hf_config({"model_type": "llava"})


def test_params_carry_logical_axes():
    axes = param_logical_axes(get_preset("tiny"))
    layer = axes["text"]["layers_0"]
    assert tuple(layer["q_proj"]["kernel"]) == ("embed", "heads", "head_dim")
    assert tuple(layer["k_proj"]["kernel"]) == ("embed", "kv_heads", "head_dim")
    assert tuple(layer["mlp"]["gate_proj"]["kernel"]) == ("embed", "mlp")
    assert tuple(axes["text"]["embed_tokens"]["embedding"]) == ("vocab", "embed")
