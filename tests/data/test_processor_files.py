"""The processor files of an HF export (`convert.hf_processor`): present, valid JSON, the family's fields.
(That transformers loads them and reproduces our prompt ids and pixels is checked by
tests/convert/verify_processor_export.py, which needs torch.)"""

import dataclasses
import filecmp
import json
import os

from sif_jax.convert.hf_processor import write_processor_files
from sif_jax.data.tokenizer import IM_END, PAD, VISION_START
from sif_jax.model.config import ModelConfig, tiny
from sif_jax.model.family import get_preset


def _qwen_ids_tiny():
    t = tiny()
    return ModelConfig(vision=t.vision, text=dataclasses.replace(t.text, vocab_size=152064))


def test_qwen2_5_vl_files_with_a_real_tokenizer(tokenizers_dir, tmp_path):
    tok = os.path.join(tokenizers_dir, "qwen3", "tokenizer.json")
    names = write_processor_files(_qwen_ids_tiny(), str(tmp_path), tok)
    assert sorted(names) == sorted(os.listdir(tmp_path)) == [
        "chat_template.jinja", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"]
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "Qwen2VLImageProcessor" and pre["processor_class"] == "Qwen2_5_VLProcessor"
    assert pre["size"] == {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
    assert (pre["patch_size"], pre["merge_size"], pre["temporal_patch_size"]) == (14, 2, 2)
    assert pre["image_mean"] == [0.48145466, 0.4578275, 0.40821073] and pre["rescale_factor"] == 1 / 255
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "Qwen2Tokenizer" and cfg["eos_token"] == IM_END and cfg["pad_token"] == PAD
    assert "chat_template" not in cfg and cfg["processor_class"] == "Qwen2_5_VLProcessor"
    assert filecmp.cmp(tmp_path / "tokenizer.json", tok, shallow=False)
    template = (tmp_path / "chat_template.jinja").read_text()
    assert VISION_START in template and "You are a helpful assistant." in template


def test_builtin_tokenizer_gets_the_image_processor_only(tmp_path):
    assert write_processor_files(tiny(), str(tmp_path)) == ["preprocessor_config.json"]
    assert os.listdir(tmp_path) == ["preprocessor_config.json"]


def test_qwen3_vl_and_llava(tmp_path):
    write_processor_files(get_preset("qwen3_vl_tiny"), str(tmp_path))
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert pre["processor_class"] == "Qwen3VLProcessor" and pre["patch_size"] == 16
    assert pre["size"] == {"shortest_edge": 65536, "longest_edge": 16777216} and pre["image_mean"] == [0.5] * 3
    assert write_processor_files(get_preset("llava_1_5_tiny"), str(tmp_path / "x")) == []
