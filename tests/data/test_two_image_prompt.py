"""SIFThinker's two-image prompt (RGB + depth): the chat template's ids, the preprocessed example, the
collated batch's geometry and region mask, and the Spectral_r depth picture."""

import numpy as np
import pytest
from PIL import Image

from sif_jax.data import pipeline as pl
from sif_jax.data.batching import collate
from sif_jax.data.image import decode_spectral_depth, encode_spectral_depth, spectral_r_palette
from sif_jax.data.prompts import SIFTHINKER_INSTRUCTION, SIFTHINKER_SFT_INSTRUCTION, get_prompt
from sif_jax.data.tokenizer import (
    IM_END,
    IM_START,
    IMAGE_PAD,
    VISION_END,
    VISION_START,
    BuiltinTokenizer,
    chat_prompt,
    chat_prompt_parts,
)
from sif_jax.model.config import tiny
from sif_jax.model.family import get_family
from sif_jax.model.rope import get_rope_index


@pytest.fixture(scope="module")
def tok():
    return BuiltinTokenizer()


@pytest.fixture(scope="module")
def cfg():
    return tiny()


def test_one_image_parts_equal_chat_prompt(tok):
    assert chat_prompt_parts(tok, [5, "Where is it?"], "sys") == chat_prompt(tok, "Where is it?", 5, "sys")


def test_two_image_turn_is_sifthinker_layout(tok):
    prompt = get_prompt("sifthinker")
    parts = prompt.user_parts("Where is the cube?", [3, 2])
    text = tok.decode(chat_prompt_parts(tok, parts, prompt.system), skip_special_tokens=False)
    want = (f"{IM_START}system\nYou are a helpful assistant.{IM_END}\n{IM_START}user\nOriginal image: "
            f"{VISION_START}{IMAGE_PAD * 3}{VISION_END}\nDepth image: {VISION_START}{IMAGE_PAD * 2}{VISION_END}\n"
            f"Where is the cube? {SIFTHINKER_INSTRUCTION}{IM_END}\n{IM_START}assistant\n")
    assert text == want
    assert "bounding box with depth is enclosed" in SIFTHINKER_SFT_INSTRUCTION
    assert get_prompt("sifthinker_sft").depth_image and not get_prompt("sifthinker_grpo").depth_image


def test_parts_reject_bad_items(tok):
    with pytest.raises(ValueError, match=r"parts\[0\]=-1"):
        chat_prompt_parts(tok, [-1, "q"])
    with pytest.raises(ValueError, match="2 image"):
        get_prompt("sifthinker").user_parts("q", [4])


def test_llava_refuses_two_images():
    with pytest.raises(ValueError, match="two-image prompt"):
        get_family("llava").chat_prompt_parts(None, ["Original image: ", 4, "x", 4, "q"], None)


def test_spectral_depth_picture_round_trips():
    levels = np.arange(256, dtype=np.float32) / 255.0
    depth = np.tile(levels, (3, 1))
    picture = encode_spectral_depth(depth)
    assert picture.dtype == np.uint8 and picture.shape == (3, 256, 3)
    np.testing.assert_array_equal(picture[0, 0], spectral_r_palette()[255])  # near = the last palette colour
    np.testing.assert_allclose(decode_spectral_depth(picture), depth, atol=1e-6)


def _example(image_size=(56, 84), depth_image=None):
    h, w = image_size
    rng = np.random.default_rng(0)
    return {"id": "r0", "index": 0, "image": rng.integers(0, 255, (h, w, 3), np.uint8),
            "depth": np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w), "depth_image": depth_image,
            "problem": "Where is the cube?", "answer": "left", "choices": [], "boxes": np.array([[0, 0, 0.5, 0.5]]),
            "trace": "", "family": "f", "relation": "", "split": "s"}


def test_preprocessed_example_carries_both_images(tok, cfg, tmp_path):
    pre = pl.Preprocessor(tok, cfg, pl.PreprocessConfig.from_prompt(get_prompt("sifthinker")))
    path = tmp_path / "d.png"
    Image.fromarray(encode_spectral_depth(np.zeros((56, 56), np.float32))).save(path)  # a smaller picture
    out = pre(_example(depth_image=str(path)))
    grids = out["image_grid_thw"]
    assert grids.tolist() == [[1, 4, 6], [1, 4, 4]]
    assert out["pixel_values"].shape[0] == 24 + 16 and out["image_patches"] == 24
    assert out["region_cells"].shape == (6 + 4,) and not out["region_cells"][6:].any()
    assert out["region_cells"][:6].tolist() == [True, True, False, False, False, False]  # box x < 0.5 on 3 cols
    ids = out["prompt_tokens"]
    assert (ids == cfg.image_token_id).sum() == 10 and (ids == cfg.vision_start_token_id).sum() == 2


def test_depth_picture_drawn_from_the_map_without_a_stored_picture(tok, cfg):
    pre = pl.Preprocessor(tok, cfg, pl.PreprocessConfig.from_prompt(get_prompt("sifthinker")))
    ex = _example()
    np.testing.assert_array_equal(pl.depth_picture(ex), encode_spectral_depth(ex["depth"]))
    assert pre(ex)["image_grid_thw"].tolist() == [[1, 4, 6], [1, 4, 6]]
    with pytest.raises(ValueError, match=r"id='r0'.*no depth map"):
        pre({**ex, "depth": None})


def test_collated_two_image_batch(tok, cfg):
    pre = pl.Preprocessor(tok, cfg, pl.PreprocessConfig.from_prompt(get_prompt("sifthinker")))
    examples = [pre(_example((56, 84))), pre(_example((56, 56)))]
    batch = collate(examples, cfg, repeat=2, length_buckets=(512,), patch_buckets=(32,))
    assert batch.inputs.pixel_values.shape == (8, 32, cfg.vision.patch_dim)  # 2 images x 4 rows
    grids = np.concatenate([np.repeat(ex["image_grid_thw"][None], 2, axis=0).reshape(-1, 3) for ex in examples])
    positions, _ = get_rope_index(batch.inputs.input_ids, grids, batch.inputs.attention_mask, cfg)
    np.testing.assert_array_equal(batch.inputs.positions, positions)
    np.testing.assert_array_equal(batch.visual_tokens, [12, 12, 8, 8])
    np.testing.assert_array_equal(batch.region_tokens, [2, 2, 1, 1])
    for row in range(4):  # the region is inside the first (RGB) image's run of pads
        first_run_end = np.flatnonzero(batch.inputs.input_ids[row] == cfg.vision_end_token_id)[0]
        assert np.flatnonzero(batch.region_mask[row]).max() < first_run_end


def test_pixel_bounds_come_from_the_model_family(tok):
    """Qwen3-VL's released processor floors images at 65536 px (256 x 256), Qwen2.5-VL's at 56 x 56; a run's
    explicit bounds win."""
    from sif_jax.model.family import get_preset

    q3 = get_preset("qwen3_vl_tiny")
    assert get_family("qwen3_vl").pixel_bounds(q3) == (65536, 16777216)
    assert get_family("qwen2_5_vl").pixel_bounds(tiny()) == (56 * 56, 28 * 28 * 1280)
    ex = _example((112, 112))
    assert pl.Preprocessor(tok, q3)(ex)["image_grid_thw"].tolist() == [[1, 16, 16]]  # 256 px of 16 px patches
    small = pl.Preprocessor(tok, q3, pl.PreprocessConfig(min_pixels=56 * 56))
    assert small(ex)["image_grid_thw"].tolist() == [[1, 8, 8]]  # 112 -> 128 px
    assert pl.Preprocessor(tok, tiny())(ex)["image_grid_thw"].tolist() == [[1, 8, 8]]  # 112 px of 14 px patches
    with pytest.raises(ValueError, match="min_pixels=10 and max_pixels=5"):
        pl.Preprocessor(tok, tiny(), pl.PreprocessConfig(min_pixels=10, max_pixels=5))
