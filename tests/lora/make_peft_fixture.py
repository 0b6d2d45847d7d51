"""Builds the PEFT fixture for tests/lora (torch + peft + transformers for step 2; CI does not need them).

    # 1. with sif_jax's environment: our exporter writes a LoRA adapter for the tiny HF model
    python tests/lora/make_peft_fixture.py export
    # 2. with torch 2.13.0 + transformers 5.23.0 + peft: PEFT loads it onto the HF base
    pip install torch==2.13.0 transformers==5.23.0 peft
    python tests/lora/make_peft_fixture.py record

Writes tests/fixtures/peft_tiny_qwen2_5_vl/: `adapter_config.json` + `adapter_model.safetensors`
(`sif_jax.lora_peft.save_peft_adapter` of seeded adapters, rank 4, alpha 8, on every linear layer
of the language model of tests/fixtures/hf_tiny_qwen2_5_vl, B non-zero so the adapter changes the
logits), and `peft_logits.npz`: the logits of `PeftModel.from_pretrained(base, dir)` on the inputs
of hf_tiny_qwen2_5_vl/io.npz (plus `merge_and_unload()`'s, and the base's for scale).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "..", "fixtures", "hf_tiny_qwen2_5_vl")
OUT = os.path.join(HERE, "..", "fixtures", "peft_tiny_qwen2_5_vl")
RANK, ALPHA = 4, 8.0


def fixture_adapters(specs, rank: int = RANK, seed: int = 0):
    """Seeded adapters for `specs` (sif_jax.lora.AdapterSpec by path): A ~ N(0, 0.1), B ~ N(0, 0.05)."""
    from sif_jax.lora import unflatten

    rng = np.random.default_rng(seed)
    flat = {}
    for path in sorted(specs):
        a_shape, b_shape = specs[path].factor_shapes(rank)
        flat[path] = {"a": (rng.standard_normal(a_shape) * 0.1).astype(np.float32),
                      "b": (rng.standard_normal(b_shape) * 0.05).astype(np.float32)}
    return unflatten(flat)


def export() -> None:
    sys.path.insert(0, os.path.join(HERE, "..", ".."))
    from sif_jax.convert.hf import load_hf_checkpoint
    from sif_jax.lora import LoraConfig, adapter_specs
    from sif_jax.lora_peft import save_peft_adapter
    from sif_jax.model.vlm import abstract_boxed_params

    config, _ = load_hf_checkpoint(BASE)
    lora = LoraConfig(rank=RANK, alpha=ALPHA)
    specs = adapter_specs(abstract_boxed_params(config), lora)
    written = save_peft_adapter(fixture_adapters(specs), lora, OUT, base_model="hf_tiny_qwen2_5_vl")
    print(f"wrote {OUT}: {len(specs)} adapters, r={written['r']}, alpha={written['lora_alpha']}")


def record() -> None:
    import torch
    from peft import PeftModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    sys.path.insert(0, os.path.join(HERE, "..", "model"))
    from make_hf_fixture import hf_logits, valid_close

    io = dict(np.load(os.path.join(BASE, "io.npz")))
    inputs = {k: io[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(BASE, dtype=torch.float32).eval()
    base_logits = hf_logits(base, inputs)
    model = PeftModel.from_pretrained(base, OUT).eval()
    with open(os.path.join(OUT, "adapter_config.json")) as f:
        n_expected = json.load(f)["target_modules"].count("|") + 1
    lora_layers = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(lora_layers) == n_expected, (len(lora_layers), n_expected)
    logits = hf_logits(model, inputs)
    mask = inputs["attention_mask"]
    change = valid_close(logits, base_logits, mask)
    assert change > 1e-2, f"the adapter barely changes the logits ({change})"
    merged = model.merge_and_unload()
    merged_logits = hf_logits(merged, inputs)
    err = valid_close(merged_logits, logits, mask)
    assert err < 1e-4, err
    np.savez_compressed(os.path.join(OUT, "peft_logits.npz"), logits=logits, merged_logits=merged_logits,
                        base_logits=base_logits)
    print(f"PEFT injected {len(lora_layers)} LoRA layers (of {n_expected} targeted); "
          f"max |logits - base| = {change:.3g}; merge_and_unload vs adapter: {err:.2e}")


if __name__ == "__main__":
    {"export": export, "record": record}[sys.argv[1] if len(sys.argv) > 1 else "record"]()
