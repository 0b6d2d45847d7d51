"""The Hugging Face processor files of an export: what `transformers.AutoProcessor.from_pretrained(dir)`
needs next to `config.json` and the weights.

    write_processor_files(config, out_dir, tokenizer_json=None) -> [file names written]

* `preprocessor_config.json`: the family's image processor as its released checkpoint configures it
  (`Qwen2VLImageProcessor`: patch / merge / temporal patch sizes, mean and std, and
  `size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}` (pixels of the resized image),
  the bounds sif_jax preprocesses with; `processor_class` names the processor).
* with a Hugging Face tokenizer (`tokenizer_json`, a Qwen tokenizer.json): a copy of it,
  `tokenizer_config.json` (the tokenizer class and the eos / pad tokens; the other fields of a
  `tokenizer_config.json` beside the source file are kept, its chat template dropped) and
  `chat_template.jinja`, Qwen2.5-VL's chat template (Qwen/Qwen2.5-VL-7B-Instruct `chat_template.json`),
  which renders the prompts sif_jax trains with (`data.tokenizer.chat_prompt_parts`: default system
  turn, images as `<|vision_start|><|image_pad|><|vision_end|>` in content order). Qwen3-VL exports use
  it too: sif_jax prompts Qwen3-VL with the same template (the released Qwen3-VL template adds tool
  and reasoning branches that sif_jax does not use).

Families without known processor files (LLaVA-1.5 here) get none; `processor_files` raises nothing and
returns {}.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from sif_jax.model.family import family_of

# Qwen/Qwen2.5-VL-7B-Instruct chat_template.json, verbatim.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
PROCESSOR_CLASSES = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}


def preprocessor_config(config: Any) -> dict[str, Any] | None:
    """The `preprocessor_config.json` content for `config`'s family (None when not known).

    Qwen2.5-VL: 14 px patches, OpenAI CLIP mean / std, 56*56 .. 28*28*1280 pixels; Qwen3-VL: 16 px
    patches, mean = std = 0.5, 65536 .. 16777216 pixels (`family.pixel_bounds`)."""
    family = family_of(config)
    if family.name not in PROCESSOR_CLASSES:
        return None
    vision = config.vision
    min_pixels, max_pixels = family.pixel_bounds(config)
    if family.name == "qwen3_vl":
        from sif_jax.model.qwen3_vl.config import QWEN3_VL_IMAGE_MEAN, QWEN3_VL_IMAGE_STD

        mean, std = QWEN3_VL_IMAGE_MEAN, QWEN3_VL_IMAGE_STD
    else:
        from sif_jax.data.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": PROCESSOR_CLASSES[family.name],
        "do_convert_rgb": True, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(mean), "image_std": list(std),
        "min_pixels": int(min_pixels), "max_pixels": int(max_pixels),
        "size": {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)},
        "patch_size": int(vision.patch_size), "temporal_patch_size": int(vision.temporal_patch_size),
        "merge_size": int(vision.spatial_merge_size),
    }


def tokenizer_config(config: Any, tokenizer_json: str) -> dict[str, Any]:
    """`tokenizer_config.json` for a Qwen tokenizer.json: the fields of a `tokenizer_config.json` beside
    it (without `chat_template`), then tokenizer class Qwen2Tokenizer, eos `<|im_end|>`, pad
    `<|endoftext|>`, no bos, and the processor class."""
    from sif_jax.data.tokenizer import IM_END, PAD

    base: dict[str, Any] = {}
    beside = os.path.join(os.path.dirname(os.path.abspath(tokenizer_json)), "tokenizer_config.json")
    if os.path.isfile(beside):
        with open(beside) as f:
            base = {k: v for k, v in json.load(f).items() if k != "chat_template"}
    base.update({"tokenizer_class": "Qwen2Tokenizer", "eos_token": IM_END, "pad_token": PAD, "bos_token": None,
                 "add_bos_token": False, "split_special_tokens": False,
                 "processor_class": PROCESSOR_CLASSES[family_of(config).name]})
    base.setdefault("model_max_length", 131072)
    return base


def write_processor_files(config: Any, out_dir: str, tokenizer_json: str | None = None) -> list[str]:
    """Writes the processor files of `config`'s family into `out_dir` (see the module doc) and returns
    their names; [] for a family without known files. `tokenizer_json` None (the built-in tokenizer)
    writes the image processor's file only."""
    pre = preprocessor_config(config)
    if pre is None:
        return []
    written = ["preprocessor_config.json"]
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=2)
    if tokenizer_json is None:
        return written
    if os.path.abspath(tokenizer_json) != os.path.abspath(os.path.join(out_dir, "tokenizer.json")):
        shutil.copyfile(tokenizer_json, os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(config, tokenizer_json), f, indent=2)
    with open(os.path.join(out_dir, "chat_template.jinja"), "w") as f:
        f.write(QWEN2_5_VL_CHAT_TEMPLATE)
    return written + ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
