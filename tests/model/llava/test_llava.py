"""LLaVA config, host inputs and the family interface (no HF needed)."""

import dataclasses

import jax
import numpy as np
import pytest

from sif_jax.data.tokenizer import BuiltinTokenizer
from sif_jax.model import family
from sif_jax.model.llava import inputs as li
from sif_jax.model.llava.config import LlavaConfig, llava_1_5_tiny


def test_registry_dispatches_on_family_and_model_type():
    tiny = family.get_preset("llava_1_5_tiny")
    assert family.family_of(tiny).name == "llava" and family.family_of(family.get_preset("tiny")).name == "qwen2_5_vl"
    assert family.family_for_hf_config({"model_type": "llava"}).name == "llava"
    assert family.family_for_hf_config({"model_type": "qwen2_5_vl"}).name == "qwen2_5_vl"
    with pytest.raises(ValueError, match="model_type='bert' is not supported"):
        family.family_for_hf_config({"model_type": "bert"})
    with pytest.raises(ValueError, match="model preset 'nope' is unknown"):
        family.get_preset("nope")
    assert {"tiny", "qwen2_5_vl_7b", "llava_1_5_7b", "llava_1_5_13b", "llava_1_5_tiny"} <= set(family.presets())


def test_tiny_preset_is_the_released_geometry_at_toy_width():
    tiny, full = llava_1_5_tiny(), family.get_preset("llava_1_5_7b")
    for field in ("image_size", "patch_size", "num_channels"):
        assert getattr(tiny.vision, field) == getattr(full.vision, field)
    assert tiny.image_seq_length == 576 and tiny.vision_feature_layer == -2
    assert tiny.vision_feature_select_strategy == "default" and tiny.text.attention_bias is False


@pytest.mark.parametrize("field, value, match", [
    ("vision_feature_select_strategy", "pooled", "vision_feature_select_strategy='pooled'"),
    ("vision_feature_layer", 9, "vision_feature_layer=9"),
    ("image_token_id", 5000, "image_token_id=5000"),
    ("remat_policy", "some", "remat_policy='some'"),
])
def test_config_validation_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(llava_1_5_tiny(), **{field: value})


def test_from_hf_config_rejects_what_it_cannot_run():
    hf = llava_1_5_tiny().to_hf_config()
    with pytest.raises(ValueError, match="model_type='qwen2_5_vl'"):
        LlavaConfig.from_hf_config({**hf, "model_type": "qwen2_5_vl"})
    with pytest.raises(ValueError, match="vision_feature_layer=\\[-2, -5\\]"):
        LlavaConfig.from_hf_config({**hf, "vision_feature_layer": [-2, -5]})
    with pytest.raises(ValueError, match="rope type 'linear'"):
        LlavaConfig.from_hf_config({**hf, "text_config": {**hf["text_config"],
                                                          "rope_parameters": {"rope_type": "linear"}}})
    assert LlavaConfig.from_hf_config(hf) == llava_1_5_tiny()


def test_prepare_inputs_checks_images_and_positions():
    config = llava_1_5_tiny()
    ids = np.array([[0, 0, 2, 7] + [config.image_token_id] * 576 + [8]])
    mask = (np.arange(ids.shape[1]) >= 2).astype(np.int32)[None]
    pixels = np.zeros((1, 3, 336, 336), np.float32)
    out = li.prepare_inputs(config, ids, mask, pixels)
    assert out["positions"].shape == (1, 1, ids.shape[1])
    assert out["positions"][0, 0, :3].tolist() == [0, 0, 0] and out["positions"][0, 0, -1] == ids.shape[1] - 3
    with pytest.raises(ValueError, match="input_ids hold 576 image tokens .* 2 images give 1152 features"):
        li.prepare_inputs(config, ids, mask, np.zeros((2, 3, 336, 336), np.float32))
    with pytest.raises(ValueError, match="no pixel_values"):
        li.prepare_inputs(config, ids, mask)
    with pytest.raises(ValueError, match="pixel_values has shape"):
        li.prepare_inputs(config, ids, mask, np.zeros((1, 3, 224, 224), np.float32))
    with pytest.raises(ValueError, match="image_grid_thw is a Qwen input"):
        li.prepare_inputs(config, ids, mask, pixels, image_grid_thw=np.array([[1, 24, 24]]))


def test_chat_prompt_is_the_llava_template():
    tok = BuiltinTokenizer()
    config = llava_1_5_tiny()
    ids = family.family_of(config).chat_prompt(tok, "Is the cube left?", 3, None)
    assert ids.count(config.image_token_id) == 3
    text = tok.decode(ids, skip_special_tokens=False)
    assert text == "USER: " + tok.decode([config.image_token_id] * 3, skip_special_tokens=False) + \
        "\nIs the cube left? ASSISTANT:"
    assert li.chat_prompt_text("q", "sys") == "sys USER: <image>\nq ASSISTANT:"


def test_crop_boxes_and_region_cells_follow_the_centre_crop():
    config = llava_1_5_tiny()
    # 672 x 336 (w x h) -> resized 672 x 336 (shortest side 336), crop columns [168, 504).
    boxes = np.array([[0.0, 0.0, 0.25, 1.0],     # entirely left of the crop
                      [0.5, 0.5, 0.75, 1.0]])    # crop x in [168/336, 336/336] -> [0.5, 1.0]
    cropped = li.crop_boxes(boxes, 336, 672, config)
    np.testing.assert_allclose(cropped[0], [0, 0, 0, 1])
    np.testing.assert_allclose(cropped[1], [0.5, 0.5, 1.0, 1.0])
    cells = li.region_cells(cropped, config).reshape(24, 24)
    assert cells.sum() == 12 * 12 and cells[12:, 12:].all()  # the zero-area box marks nothing
    img = family.family_of(config).process_example_image(
        np.zeros((336, 672, 3), np.uint8), boxes, config, min_pixels=0, max_pixels=0)
    assert img.arrays["pixel_values"].shape == (1, 3, 336, 336) and img.num_tokens == 576
    np.testing.assert_array_equal(img.region_cells, cells.reshape(-1))


def test_remat_and_scan_do_not_change_the_loss_or_grads():
    from sif_jax.sft import sft_loss_terms

    base = llava_1_5_tiny().replace(attention_backend="reference")
    fam = family.family_of(base)
    params = fam.init_params(base, jax.random.key(0))
    rng = np.random.default_rng(0)
    ids = np.concatenate([[2, 9], [base.image_token_id] * 576, rng.integers(10, 900, 6)])[None]
    pixels = rng.standard_normal((1, 3, 336, 336)).astype(np.float32)
    batch = dict(fam.prepare_inputs(base, ids, None, pixels))
    batch["loss_mask"] = np.arange(ids.shape[1])[None] >= ids.shape[1] - 6

    def loss_and_grads(config, p):
        return jax.value_and_grad(lambda q: sft_loss_terms(q, batch, batch["loss_mask"], config=config)[0])(p)

    want_loss, want_grads = loss_and_grads(base, params)
    from sif_jax.model.layout import stack_layers, unstack_layers

    for config in (base.replace(remat_policy="full"), base.replace(scan_layers=True, remat_policy="dots")):
        p = stack_layers(params, config) if config.scan_layers else params
        loss, grads = loss_and_grads(config, p)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
        grads = unstack_layers(grads, config) if config.scan_layers else grads
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, want_grads)


def test_qwen_forward_through_the_interface_equals_vlm_forward(hf_tiny_dir, hf_tiny_io):
    from sif_jax.model import vlm

    config, params = family.load_hf_checkpoint(hf_tiny_dir)
    args = (hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"], hf_tiny_io["pixel_values"])
    a, _ = family.forward(params, config, *args, image_grid_thw=hf_tiny_io["image_grid_thw"])
    b, _ = vlm.forward(params, config, *args, hf_tiny_io["image_grid_thw"])
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
