"""Builds the Hugging Face parity fixture for tests/model (needs torch + transformers; CI does not).

    pip install torch==2.13.0 transformers   # plus this package
    python tests/model/make_hf_fixture.py

Writes tests/fixtures/hf_tiny_qwen2_5_vl/: a tiny random `Qwen2_5_VLForConditionalGeneration`
(saved with `save_pretrained`, which writes the released key layout) and `io.npz` with a batch of
two left-padded prompts of different lengths, each with a non-square image, and HF's outputs:
logits, M-RoPE positions, rope deltas and 16 greedy tokens. The config exercises the 2x2 merge,
several windows including edge windows, a full-attention block and GQA.

It also checks the other direction: a directory written by `sif_jax.convert.hf.save_hf_checkpoint`
(from the fixture, and from the tied `tiny` preset) loads in transformers and gives the same
logits, and it records HF's parameter counts of the released 3B/7B configs (built on the meta
device from `ModelConfig.to_hf_config()`, so no weights are needed).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "hf_tiny_qwen2_5_vl")

VOCAB = 300
IMAGE, VIDEO, V_START, V_END, EOS, BOS = 290, 291, 292, 293, 294, 295
GRIDS = np.array([[1, 6, 10], [1, 4, 6]])  # patch grids (t, h, w): 3x5 and 2x3 merged tokens


def tiny_hf_config() -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        vision_config=dict(
            depth=3, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
            window_size=56, fullatt_block_indexes=[1], patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, tokens_per_second=2,
        ),
        text_config=dict(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0,
        ),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=V_START,
        vision_end_token_id=V_END, tie_word_embeddings=False,
    )


def batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Two prompts [text, <vs>, image pads, <ve>, text] of different lengths, left-padded."""
    rows = []
    for (t, h, w), (before, after) in zip(GRIDS, [(5, 7), (3, 4)], strict=True):
        pads = t * h * w // 4
        rows.append(np.concatenate([
            rng.integers(10, 280, before), [V_START], np.full(pads, IMAGE), [V_END],
            rng.integers(10, 280, after),
        ]))
    length = max(map(len, rows))
    input_ids = np.zeros((2, length), np.int64)
    mask = np.zeros((2, length), np.int64)
    for i, r in enumerate(rows):
        input_ids[i, length - len(r):] = r
        mask[i, length - len(r):] = 1
    n_patches = int(np.prod(GRIDS, axis=-1).sum())
    pixel_values = rng.standard_normal((n_patches, 3 * 2 * 14 * 14)).astype(np.float32)
    return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixel_values,
            "image_grid_thw": GRIDS}


def hf_logits(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(inputs["input_ids"]),
            attention_mask=torch.from_numpy(inputs["attention_mask"]),
            pixel_values=torch.from_numpy(inputs["pixel_values"]),
            image_grid_thw=torch.from_numpy(inputs["image_grid_thw"]),
            mm_token_type_ids=torch.from_numpy((inputs["input_ids"] == model.config.image_token_id)
                                               .astype(np.int64)),
        )
    return out.logits.float().numpy()


def valid_close(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a - b)[mask.astype(bool)].max())


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = Qwen2_5_VLForConditionalGeneration(tiny_hf_config()).eval()
    # Random init leaves some biases at zero; make every tensor non-trivial so a
    # transposed or misplaced weight cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)

    inputs = batch(rng)
    logits = hf_logits(model, inputs)
    mm = torch.from_numpy((inputs["input_ids"] == IMAGE).astype(np.int64))
    positions, deltas = model.model.get_rope_index(
        torch.from_numpy(inputs["input_ids"]), mm, torch.from_numpy(GRIDS), None, None,
        torch.from_numpy(inputs["attention_mask"]),
    )
    with torch.no_grad():
        generated = model.generate(
            input_ids=torch.from_numpy(inputs["input_ids"]),
            attention_mask=torch.from_numpy(inputs["attention_mask"]),
            pixel_values=torch.from_numpy(inputs["pixel_values"]),
            image_grid_thw=torch.from_numpy(GRIDS), mm_token_type_ids=mm,
            max_new_tokens=16, min_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0,
        )
    greedy = generated[:, inputs["input_ids"].shape[1]:].numpy()
    np.savez_compressed(
        os.path.join(OUT, "io.npz"), **inputs, logits=logits, positions=positions.numpy(),
        rope_deltas=deltas.numpy().reshape(-1), greedy_tokens=greedy,
    )
    print(f"wrote {OUT}: logits {logits.shape}, greedy {greedy.tolist()}")

    # Our saver's output must load in transformers and give the same numbers.
    sys.path.insert(0, os.path.join(HERE, "..", ".."))
    import jax

    from sif_jax.convert.hf import load_hf_checkpoint, save_hf_checkpoint
    from sif_jax.model.config import get_preset
    from sif_jax.model.vlm import forward, init_params

    config, params = load_hf_checkpoint(OUT)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(config, params, tmp, max_shard_bytes=200_000)  # sharded + index
        reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp).eval()
        err = valid_close(hf_logits(reloaded, inputs), logits, inputs["attention_mask"])
        print(f"save_hf_checkpoint(fixture) -> transformers: max |dlogits| = {err:.2e}")
        assert err < 1e-5, err

    tiny = get_preset("tiny")
    tiny_params = init_params(tiny, jax.random.key(1))
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(tiny, tiny_params, tmp)
        reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp).eval()
        assert reloaded.config.tie_word_embeddings
        ids = np.array([[tiny.bos_token_id, 20, tiny.vision_start_token_id] + [tiny.image_token_id] * 2
                        + [tiny.vision_end_token_id, 30, 40]])
        tiny_inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                       "pixel_values": rng.standard_normal((8, 1176)).astype(np.float32),
                       "image_grid_thw": np.array([[1, 2, 4]])}
        ours = np.asarray(forward(tiny_params, tiny, **tiny_inputs)[0])
        err = valid_close(hf_logits(reloaded, tiny_inputs), ours, tiny_inputs["attention_mask"])
        print(f"save_hf_checkpoint(tiny preset, tied) -> transformers: max |dlogits| = {err:.2e}")
        assert err < 1e-4, err

    counts = {}
    for name in ("qwen2_5_vl_3b", "qwen2_5_vl_7b"):
        hf_cfg = Qwen2_5_VLConfig(**get_preset(name).to_hf_config())
        with torch.device("meta"):
            meta = Qwen2_5_VLForConditionalGeneration(hf_cfg)
        # Tied checkpoints store the embedding once; count unique tensors.
        counts[name] = sum(p.numel() for p in meta.parameters())
    with open(os.path.join(OUT, "released_param_counts.json"), "w") as f:
        json.dump(counts, f, indent=2)
    print("HF parameter counts of the released configs:", counts)


if __name__ == "__main__":
    main()
