"""Builds the Hugging Face LLaVA parity fixture for tests/model/llava (needs torch + transformers; CI does not).

    /work/hfvenv/bin/python tests/model/llava/make_hf_fixture.py            # write the fixture
    /work/hfvenv/bin/python tests/model/llava/make_hf_fixture.py --check DIR  # a dir sif_jax saved

Writes tests/fixtures/hf_tiny_llava/: a tiny random `LlavaForConditionalGeneration` (CLIP tower with
3 layers at 56 px / 14 px patches -> 16 features per image, feature layer -2, CLS dropped; a 3-layer
LLaMA decoder with GQA off, as LLaVA-1.5) saved with `save_pretrained`, and `io.npz`:

* `images_*` uint8 [H, W, 3] (two non-square images) and `pixel_values` [2, 3, 56, 56] from the slow
  (PIL) `CLIPImageProcessorPil` configured like LLaVA-1.5's (shortest edge, bicubic, centre crop,
  CLIP mean/std) at 56 px; `released_*`: one image through the released 336 px settings, the
  output sampled every 7th pixel (`released_pixels`) and its sum;
* a left-padded batch of two prompts of different lengths, one image each, the positions HF's
  `generate` uses (cumsum of the mask - 1) and HF's logits with them, and 8 greedy tokens.

`released_param_counts.json`: HF's parameter counts of llava-1.5-7b/13b built on the meta device
from `LlavaConfig.to_hf_config()` of the presets (`released_configs.json` holds those configs, so
this script needs no jax).

`--check DIR` loads a directory written by `sif_jax.convert.hf.save_hf_checkpoint` (from this
fixture) in transformers and asserts its logits equal the fixture's.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "fixtures", "hf_tiny_llava")

VOCAB = 300
IMAGE, PAD, BOS, EOS = 290, 0, 1, 2
SIZE = 56  # CLIP image size of the tiny tower: a 4 x 4 grid of 14 px patches
FEATURES = (SIZE // 14) ** 2


def tiny_hf_config() -> LlavaConfig:
    return LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=2, image_size=SIZE, patch_size=14, projection_dim=16, hidden_act="quick_gelu",
        ),
        text_config=dict(
            model_type="llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5, max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        ),
        image_token_index=IMAGE, pad_token_id=PAD, image_seq_length=FEATURES, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False,
    )


def processor(size: int) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Two prompts [bos, text, image tokens, text] of different lengths, left-padded."""
    rows = []
    for before, after in [(5, 7), (2, 3)]:
        rows.append(np.concatenate([[BOS], rng.integers(10, 280, before), np.full(FEATURES, IMAGE),
                                    rng.integers(10, 280, after)]))
    length = max(map(len, rows))
    input_ids = np.full((2, length), PAD, np.int64)
    mask = np.zeros((2, length), np.int64)
    for i, r in enumerate(rows):
        input_ids[i, length - len(r):] = r
        mask[i, length - len(r):] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def positions(mask: np.ndarray) -> np.ndarray:
    """What HF's generate passes: cumsum(mask) - 1, 1 on padding."""
    pos = np.cumsum(mask, axis=1) - 1
    return np.where(mask > 0, pos, 1)


def hf_logits(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(inputs["input_ids"]),
            attention_mask=torch.from_numpy(inputs["attention_mask"]),
            pixel_values=torch.from_numpy(inputs["pixel_values"]),
            position_ids=torch.from_numpy(positions(inputs["attention_mask"])),
        )
    return out.logits.float().numpy()


def max_err(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a - b)[mask.astype(bool)].max())


def check(path: str) -> None:
    io = dict(np.load(os.path.join(OUT, "io.npz")))
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    err = max_err(hf_logits(model, io), io["logits"], io["attention_mask"])
    print(f"{path} -> transformers: max |dlogits| = {err:.2e}")
    assert err < 1e-5, err


def released_counts() -> dict[str, int]:
    with open(os.path.join(OUT, "released_configs.json")) as f:
        configs = json.load(f)
    counts = {}
    for name, cfg in configs.items():
        with torch.device("meta"):
            model = LlavaForConditionalGeneration(LlavaConfig(**cfg))
        counts[name] = int(sum(p.numel() for p in model.parameters()))
    return counts


def main() -> None:
    if sys.argv[1:2] == ["--check"]:
        check(sys.argv[2])
        return
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = LlavaForConditionalGeneration(tiny_hf_config()).eval()
    # Random init leaves biases and norms at 0 / 1; perturb every tensor so a transposed or
    # misplaced weight cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)

    images = [rng.integers(0, 256, (70, 50, 3), dtype=np.uint8), rng.integers(0, 256, (45, 91, 3), dtype=np.uint8)]
    pixel_values = processor(SIZE)(images, return_tensors="np")["pixel_values"].astype(np.float32)
    released = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    released_out = processor(336)([released], return_tensors="np")["pixel_values"][0].astype(np.float32)

    inputs = batch(rng)
    inputs["pixel_values"] = pixel_values
    logits = hf_logits(model, inputs)
    with torch.no_grad():
        generated = model.generate(
            input_ids=torch.from_numpy(inputs["input_ids"]),
            attention_mask=torch.from_numpy(inputs["attention_mask"]),
            pixel_values=torch.from_numpy(pixel_values),
            max_new_tokens=8, min_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=PAD,
        )
    greedy = generated[:, inputs["input_ids"].shape[1]:].numpy()
    np.savez_compressed(
        os.path.join(OUT, "io.npz"), **inputs, logits=logits, positions=positions(inputs["attention_mask"]),
        greedy_tokens=greedy, images_0=images[0], images_1=images[1], released_image=released,
        released_pixels=released_out[:, ::7, ::7], released_sum=np.float64(released_out.astype(np.float64).sum()),
    )
    print(f"wrote {OUT}: logits {logits.shape}, greedy {greedy.tolist()}")
    if os.path.exists(os.path.join(OUT, "released_configs.json")):
        counts = released_counts()
        with open(os.path.join(OUT, "released_param_counts.json"), "w") as f:
            json.dump(counts, f, indent=2)
        print(f"released parameter counts: {counts}")


if __name__ == "__main__":
    main()
