"""Builds the PEFT fixtures for tests/lora (torch + peft + transformers for step 2; CI does not need them).

    # 1. with sif_jax's environment: our exporter writes a LoRA adapter for the tiny HF model
    python tests/lora/make_peft_fixture.py export [llava]
    # 2. with torch 2.13.0 + transformers 5.23.0 + peft: PEFT loads it onto the HF base
    pip install torch==2.13.0 transformers==5.23.0 peft
    python tests/lora/make_peft_fixture.py record [llava]

Writes tests/fixtures/peft_tiny_qwen2_5_vl/: `adapter_config.json` + `adapter_model.safetensors`
(`sif_jax.lora_peft.save_peft_adapter` of seeded adapters, rank 4, alpha 8, on every linear layer
of the language model of tests/fixtures/hf_tiny_qwen2_5_vl, B non-zero so the adapter changes the
logits), and `peft_logits.npz`: the logits of `PeftModel.from_pretrained(base, dir)` on the inputs
of hf_tiny_qwen2_5_vl/io.npz (plus `merge_and_unload()`'s, and the base's for scale).

With `llava`: tests/fixtures/peft_tiny_llava/ for tests/fixtures/hf_tiny_llava, the same but with
adapters on every Linear of the model (`LLAVA_TARGETS`: the LLaMA decoder, the CLIP tower's
attention and MLP, the projector and the LM head), so every module-name mapping of the family is
loaded by PEFT.
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
LLAVA_BASE = os.path.join(HERE, "..", "fixtures", "hf_tiny_llava")
LLAVA_OUT = os.path.join(HERE, "..", "fixtures", "peft_tiny_llava")
LLAVA_TARGETS = (
    r"^text/layers(_\d+)?/(q_proj|k_proj|v_proj|o_proj|mlp/(gate_proj|up_proj|down_proj))/kernel$",
    r"^vision_tower/layers_\d+/(q_proj|k_proj|v_proj|out_proj|fc1|fc2)/kernel$",
    r"^projector/linear_\d/kernel$",
    r"^text/lm_head/kernel$",
)


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


def export_llava() -> None:
    sys.path.insert(0, os.path.join(HERE, "..", ".."))
    from sif_jax.lora import LoraConfig, adapter_specs
    from sif_jax.lora_peft import save_peft_adapter
    from sif_jax.model import family

    config, _ = family.load_hf_checkpoint(LLAVA_BASE)
    lora = LoraConfig(rank=RANK, alpha=ALPHA, targets=LLAVA_TARGETS)
    specs = adapter_specs(family.family_of(config).abstract_boxed_params(config), lora)
    written = save_peft_adapter(fixture_adapters(specs), lora, LLAVA_OUT, base_model="hf_tiny_llava", config=config)
    print(f"wrote {LLAVA_OUT}: {len(specs)} adapters, r={written['r']}, alpha={written['lora_alpha']}")


def record_llava() -> None:
    import torch
    from peft import PeftModel
    from transformers import LlavaForConditionalGeneration

    sys.path.insert(0, os.path.join(HERE, "..", "model", "llava"))
    from make_hf_fixture import hf_logits, max_err

    io = dict(np.load(os.path.join(LLAVA_BASE, "io.npz")))
    inputs = {k: io[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    base = LlavaForConditionalGeneration.from_pretrained(LLAVA_BASE, dtype=torch.float32).eval()
    base_logits = hf_logits(base, inputs)
    model = PeftModel.from_pretrained(base, LLAVA_OUT).eval()
    with open(os.path.join(LLAVA_OUT, "adapter_config.json")) as f:
        n_expected = json.load(f)["target_modules"].count("|") + 1
    lora_layers = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(lora_layers) == n_expected, (len(lora_layers), n_expected)
    logits = hf_logits(model, inputs)
    mask = inputs["attention_mask"]
    change = max_err(logits, base_logits, mask)
    assert change > 1e-2, f"the adapter barely changes the logits ({change})"
    merged = model.merge_and_unload()
    merged_logits = hf_logits(merged, inputs)
    err = max_err(merged_logits, logits, mask)
    assert err < 1e-4, err
    np.savez_compressed(os.path.join(LLAVA_OUT, "peft_logits.npz"), logits=logits, merged_logits=merged_logits,
                        base_logits=base_logits)
    print(f"PEFT injected {len(lora_layers)} LoRA layers (of {n_expected} targeted); "
          f"max |logits - base| = {change:.3g}; merge_and_unload vs adapter: {err:.2e}")


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
    step = sys.argv[1] if len(sys.argv) > 1 else "record"
    if len(sys.argv) > 2 and sys.argv[2] == "llava":
        {"export": export_llava, "record": record_llava}[step]()
    else:
        {"export": export, "record": record}[step]()
