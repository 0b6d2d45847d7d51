"""Checks an `--format=hf` export's processor files with transformers (not collected by pytest; CI has no torch).

    PYTHONPATH=$PWD JAX_PLATFORMS=cpu python tests/convert/verify_processor_export.py make /tmp/pexp  # sif_jax
    /work/hfvenv/bin/python tests/convert/verify_processor_export.py check /tmp/pexp  # torch + transformers

`make` exports a random tiny model with Qwen's token ids and the real Qwen tokenizer
(.cache/tokenizers/qwen3, tests/data/fetch_tokenizers.sh), and writes sif_jax's prompt ids and pixel values for
SIFThinker's two-image prompt and the built-in prompt. `check` loads the export's tokenizer, image processor and
chat template with `from_pretrained`, renders the same messages with the processor and compares ids, grids and
pixel values. (`AutoProcessor.from_pretrained` also builds Qwen2.5-VL's video processor, which needs
torchvision; the check builds the image-only processor from the same files.)
"""

import dataclasses
import json
import os
import shutil
import sys


def make(root):
    import jax
    import numpy as np
    from PIL import Image

    from sif_jax.convert.hf import save_hf_checkpoint
    from sif_jax.data import pipeline as pl
    from sif_jax.data.image import encode_spectral_depth
    from sif_jax.data.prompts import get_prompt
    from sif_jax.data.tokenizer import HFTokenizer
    from sif_jax.export import export
    from sif_jax.model.config import ModelConfig, tiny
    from sif_jax.model.family import family_of

    t = tiny()
    cfg = ModelConfig(vision=t.vision, text=dataclasses.replace(t.text, vocab_size=152064))
    params = family_of(cfg).init_params(cfg, jax.random.key(0))
    src, out = root + "/src", root + "/out"
    for d in (src, out):
        shutil.rmtree(d, ignore_errors=True)
    save_hf_checkpoint(cfg, params, src)
    tokpath = ".cache/tokenizers/qwen3/tokenizer.json"
    meta = export(src, "hf", out, tokenizer=tokpath)
    print(meta["processor_files"], sorted(os.listdir(out)))
    tok = HFTokenizer(tokpath)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (131, 97, 3), np.uint8)
    depth = encode_spectral_depth(np.linspace(0, 1, 131 * 97, dtype=np.float32).reshape(131, 97))
    Image.fromarray(rgb).save(root + "/rgb.png")
    Image.fromarray(depth).save(root + "/depth.png")
    res = {}
    for name in ("sifthinker", "builtin"):
        pre = pl.Preprocessor(tok, cfg, pl.PreprocessConfig.from_prompt(get_prompt(name)))
        ex = pre({"id": "x", "index": 0, "image": root + "/rgb.png", "depth_image": root + "/depth.png",
                  "depth": None, "problem": "Where is the cube?", "answer": "", "boxes": np.zeros((0, 4))})
        p = get_prompt(name)
        res[name] = {"ids": ex["prompt_tokens"].tolist(), "grid": np.asarray(ex["image_grid_thw"]).tolist(),
                     "question": p.question("Where is the cube?"), "two": p.depth_image,
                     "pixel_values": ex["pixel_values"].tolist() if name == "sifthinker" else None}
    json.dump(res, open(root + "/ours.json", "w"))


def check(root):
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin
    out = root + "/out"
    tok = AutoTokenizer.from_pretrained(out)
    ip = AutoImageProcessor.from_pretrained(out)
    print(type(tok).__name__, type(ip).__name__, ip.size, ip.patch_size, ip.merge_size, ip.image_mean)
    try:
        proc = Qwen2_5_VLProcessor.from_pretrained(out, video_processor=None)
        print("Qwen2_5_VLProcessor.from_pretrained(video_processor=None) ok", type(proc).__name__)
    except Exception as e:
        print("from_pretrained without video processor failed:", type(e).__name__, str(e)[:200])
        class P(Qwen2_5_VLProcessor):
            def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kw):
                self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
                self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
                self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
                ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        proc = P(ip, tok, open(out + "/chat_template.jinja").read())
    print("tokenizer chat_template from tokenizer_config:", tok.chat_template is not None)
    ours = json.load(open(root + "/ours.json"))
    rgb, depth = Image.open(root + "/rgb.png"), Image.open(root + "/depth.png")
    for name, o in ours.items():
        if o["two"]:
            content = [{"type": "text", "text": "Original image: "}, {"type": "image"},
                       {"type": "text", "text": "\nDepth image: "}, {"type": "image"},
                       {"type": "text", "text": "\n" + o["question"]}]
            images = [rgb, depth]
        else:
            content = [{"type": "image"}, {"type": "text", "text": o["question"]}]
            images = [rgb]
        text = proc.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                        add_generation_prompt=True)
        res = proc(text=[text], images=images, return_tensors="np")
        ids = res["input_ids"][0].tolist()
        print(name, "ids equal:", ids == o["ids"], len(ids), len(o["ids"]), "grid", res["image_grid_thw"].tolist(),
              o["grid"])
        if o["pixel_values"] is not None:
            err = float(np.abs(np.asarray(o["pixel_values"]) - res["pixel_values"]).max())
            print("  max |pixel_values - HF| =", err)


if __name__ == "__main__":
    mode, root = sys.argv[1], sys.argv[2]
    {"make": make, "check": check}[mode](root)
