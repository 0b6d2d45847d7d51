"""PEFT LoRA adapter directories <-> sif_jax adapters (`sif_jax.lora`).

A directory holds `adapter_config.json` (peft_type LORA, r, lora_alpha, lora_dropout,
target_modules) and `adapter_model.safetensors` with, per adapted Linear `<module>` (its module
name in the family's transformers model, >= 4.52 / 5.x: `Qwen2_5_VLForConditionalGeneration`,
`Qwen3VLForConditionalGeneration` or `LlavaForConditionalGeneration`, e.g.
`model.language_model.layers.0.self_attn.q_proj`, `model.visual.blocks.0.attn.qkv`,
`model.vision_tower.encoder.layers.0.self_attn.out_proj`, `model.multi_modal_projector.linear_1`):

    base_model.model.<module>.lora_A.weight  float32 [r, in]    = A.reshape(in, r).T
    base_model.model.<module>.lora_B.weight  float32 [out, r]   = B.reshape(r, out).T

`in`/`out` are the kernel's input/output dims flattened in C order, which is the order of HF's
torch Linear weight [out, in] (`convert.hf` transposes/reshapes kernels the same way). Stacked
(`scan_layers`) adapters are written one tensor per layer. `peft.PeftModel.from_pretrained(base,
dir)` loads such a directory onto the HF base (tests/lora/make_peft_fixture.py checks the logits),
and `load_peft_adapter` reads it back (also one trained elsewhere, with the module names of any
layout the family's HF converter reads: for Qwen2.5-VL the older `model.layers.*` / `visual.*`, for
LLaVA `language_model.model.*` / `vision_tower.vision_model.*`) to continue training. PEFT
matches keys to the in-memory module names, so writing the released checkpoint names
(`model.layers.0...`) would load nothing onto a transformers 5 model. The family comes from the
model config passed as `config` (None: Qwen2.5-VL); its HF tensor names come from the family's
converter rules (`ModelFamily.hf_rules`) and become module names by `_MODULE_PREFIXES`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

from sif_jax.convert.hf import param_path
from sif_jax.convert.safetensors_io import SafetensorsFile, write_safetensors
from sif_jax.lora import AdapterSpec, LoraConfig, flatten, unflatten

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_STACKED = re.compile(r"^(text/layers|visual/blocks)/")
_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[A-Za-z0-9_]+)?\.weight$")


def _per_layer(path: str, i: int) -> str:
    return _STACKED.sub(lambda m: f"{m.group(1)}_{i}/", path)


# The tensor names a family's converter writes -> transformers >= 5 module names (first prefix that
# matches wins; no match: the name is the module's). Qwen3-VL writes the module layout itself.
_MODULE_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "qwen2_5_vl": (("visual.", "model.visual."), ("model.", "model.language_model.")),
    "qwen3_vl": (),
    "llava": (("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector."),
              ("language_model.model.", "model.language_model."), ("language_model.lm_head", "lm_head")),
}


def _family(config: Any):
    """(family name, compiled converter rules, canonical-name function) of a model config (None:
    Qwen2.5-VL)."""
    if config is None:
        from sif_jax.convert.hf import _COMPILED, canonical_name

        return "qwen2_5_vl", _COMPILED, canonical_name
    from sif_jax.model.family import family_of

    name = getattr(config, "family", "qwen2_5_vl")
    if name not in _MODULE_PREFIXES:
        raise ValueError(f"PEFT adapters: model family {name!r} has no module-name mapping "
                         f"(known: {sorted(_MODULE_PREFIXES)})")
    compiled, canonical = family_of(config).hf_rules()
    return name, compiled, canonical


def _module(path: str, config: Any = None) -> str:
    """The transformers module name of an adapted kernel's per-layer path."""
    family, compiled, _ = _family(config)
    name = None
    for _, path_regex, rule in compiled:
        match = path_regex.match(path)
        if match:
            name = rule.hf.format(*match.groups())
            break
    if name is None or not name.endswith(".weight"):
        raise ValueError(f"LoRA adapter {path!r} has no Hugging Face Linear counterpart")
    name = name[: -len(".weight")]
    for old, new in _MODULE_PREFIXES[family]:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def peft_tensors(adapters: Any, config: Any = None) -> list[tuple[str, np.ndarray]]:
    """(PEFT key, float32 array) of every adapter, one pair of tensors per layer; module names of
    `config`'s family (None: Qwen2.5-VL)."""
    out = []
    for path, ab in sorted(flatten(adapters).items()):
        a, b = np.asarray(ab["a"], np.float32), np.asarray(ab["b"], np.float32)
        rows = ([(_per_layer(path, i), a[i], b[i]) for i in range(a.shape[0])] if _STACKED.match(path)
                else [(path, a, b)])
        for p, ai, bi in rows:
            rank = ai.shape[-1]
            module = _module(p, config)
            out.append((f"{PREFIX}{module}.lora_A.weight", np.ascontiguousarray(ai.reshape(-1, rank).T)))
            out.append((f"{PREFIX}{module}.lora_B.weight", np.ascontiguousarray(bi.reshape(rank, -1).T)))
    return out


def _target_regex(modules: list[str]) -> str:
    """A `target_modules` regex (PEFT full-matches it against module names) naming exactly these."""
    return "(?:" + "|".join(re.escape(n) for n in sorted(modules)) + ")"


def save_peft_adapter(adapters: Any, lora: LoraConfig, out: str, *, base_model: str = "",
                      revision: str | None = None, config: Any = None) -> dict:
    """Writes `out/adapter_config.json` and `out/adapter_model.safetensors`; returns the config.

    Args:
      adapters: the nested adapters tree (arrays of any placement; copied to host).
      lora: rank, alpha and dropout recorded in the config.
      base_model: `base_model_name_or_path` (the HF directory or hub id of the base).
      config: the model config, whose family names the modules (None: Qwen2.5-VL).
    """
    tensors = peft_tensors(adapters, config)
    modules = sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k, _ in tensors})
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model or None,
        "revision": revision, "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
        "target_modules": _target_regex(modules), "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "modules_to_save": None,
        "inference_mode": True,
    }
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, ADAPTER_WEIGHTS), tensors)
    with open(os.path.join(out, ADAPTER_CONFIG), "w") as f:
        json.dump(config, f, indent=2)
    return config


def read_adapter_config(directory: str) -> dict:
    """The adapter_config.json of a PEFT LoRA directory. Raises FileNotFoundError (no such
    file) or ValueError (not a plain LoRA adapter: another peft_type, DoRA, rsLoRA, fan_in_fan_out)."""
    path = os.path.join(directory, ADAPTER_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory!r} is not a PEFT adapter directory (no {ADAPTER_CONFIG})")
    with open(path) as f:
        config = json.load(f)
    for key, want in (("peft_type", "LORA"), ("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False)):
        if config.get(key, want) != want:
            raise ValueError(f"{path}: {key}={config.get(key)!r}; only plain LoRA ({key}={want!r}) is supported")
    return config


def load_peft_adapter(directory: str, specs: dict[str, AdapterSpec], lora: LoraConfig, config: Any = None) -> Any:
    """The adapters tree (float32, host NumPy) of a PEFT LoRA directory for the kernels `specs`
    (of the run's model and layer layout); `config` is the run's model config, whose family names
    the modules (None: Qwen2.5-VL).

    Raises:
      ValueError: the adapter's r / lora_alpha differ from `lora`'s, it adapts a module the run
        does not target (or not of this model), misses one the run targets, or a tensor has the
        wrong shape; each message names the key or field.
    """
    saved = read_adapter_config(directory)
    path = os.path.join(directory, ADAPTER_CONFIG)
    if int(saved.get("r", -1)) != lora.rank:
        raise ValueError(f"{path}: r={saved.get('r')} but lora.rank={lora.rank}")
    if float(saved.get("lora_alpha", -1)) != float(lora.alpha):
        raise ValueError(f"{path}: lora_alpha={saved.get('lora_alpha')} but lora.alpha={lora.alpha}")
    weights = os.path.join(directory, ADAPTER_WEIGHTS)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{directory!r}: no {ADAPTER_WEIGHTS}")
    # per-layer path -> (stacked spec path, layer index or None)
    where: dict[str, tuple[str, int | None]] = {}
    for spath, spec in specs.items():
        if spec.n_lead:
            for i in range(spec.shape[0]):
                where[_per_layer(spath, i)] = (spath, i)
        else:
            where[spath] = (spath, None)
    found: dict[tuple[str, str], np.ndarray] = {}
    _, compiled, canonical = _family(config)
    st = SafetensorsFile(weights)
    for key in st.keys():
        m = _KEY.match(key)
        if m is None:
            raise ValueError(f"{weights}: tensor {key!r} is not a LoRA A/B weight")
        hit = param_path(m.group(1) + ".weight", compiled, canonical)
        if hit is None or hit[1] not in where:
            raise ValueError(f"{weights}: tensor {key!r} adapts a module that lora.targets does not select "
                             "for this model")
        found[(hit[1], m.group(2))] = st.get(key).astype(np.float32)
    flat: dict[str, dict[str, np.ndarray]] = {}
    for spath, spec in specs.items():
        a_shape, b_shape = spec.factor_shapes(lora.rank)
        a, b = np.zeros(a_shape, np.float32), np.zeros(b_shape, np.float32)
        layers = range(spec.shape[0]) if spec.n_lead else [None]
        for i in layers:
            per = _per_layer(spath, i) if i is not None else spath
            for which in "AB":
                if (per, which) not in found:
                    raise ValueError(f"{weights}: no lora_{which} for {_module(per, config)} "
                                     "(targeted by lora.targets)")
            wa, wb = found[(per, "A")], found[(per, "B")]
            ins, outs = int(np.prod(spec.in_shape)), int(np.prod(spec.out_shape))
            if wa.shape != (lora.rank, ins) or wb.shape != (outs, lora.rank):
                raise ValueError(f"{weights}: {_module(per, config)} has lora_A {list(wa.shape)}, "
                                 f"lora_B {list(wb.shape)}; expected [{lora.rank}, {ins}] and [{outs}, {lora.rank}]")
            ai = wa.T.reshape(*spec.in_shape, lora.rank)
            bi = wb.T.reshape(lora.rank, *spec.out_shape)
            if i is None:
                a, b = ai, bi
            else:
                a[i], b[i] = ai, bi
        flat[spath] = {"a": a, "b": b}
    return unflatten(flat)
