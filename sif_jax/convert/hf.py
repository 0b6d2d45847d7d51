"""Hugging Face safetensors <-> sif_jax params, for every model family (rules here: Qwen2.5-VL's).

A family gives its tensor rules (`Rule`: HF name template <-> param path template plus the
reshape/transpose each way) and a canonical-name map through `ModelFamily.hf_rules()`; the loader
and saver below are shared. The Qwen2.5-VL rules follow.

`load_hf_checkpoint(path)` reads `config.json` and `*.safetensors` (single file or sharded with
`model.safetensors.index.json`) from a local directory, tensor by tensor. Both key layouts are
accepted: the released one (`visual.*`, `model.layers.*`, `lm_head`) and the one newer
transformers writes (`model.visual.*`, `model.language_model.*`). `save_hf_checkpoint` writes
the released layout, which every transformers version loads.

Every tensor is checked: an unknown, missing or mis-shaped tensor is an error that names it.
Both param layouts are read and written: per-layer (`text/layers_{i}`, `visual/blocks_{i}`) and,
when the config says `scan_layers=True`, stacked (`text/layers`, `visual/blocks` with a leading
layer axis; see `sif_jax.model.layout`). The safetensors always hold one tensor per layer.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from sif_jax.convert.safetensors_io import SafetensorsFile, write_safetensors
from sif_jax.model.config import ModelConfig
from sif_jax.model.layers import DTYPES
from sif_jax.model.layout import stack_layers, to_layout

Params = dict[str, Any]


def _template_regex(template: str, escape: Callable[[str], str]) -> re.Pattern:
    """'a.{0}.b' -> regex with one group per placeholder ({0}: digits, {1}: a name)."""
    parts = re.split(r"(\{[01]\})", template)
    body = "".join(
        {"{0}": r"(\d+)", "{1}": r"([a-z0-9_]+)"}.get(part, escape(part)) for part in parts
    )
    return re.compile(body + r"\Z")


@dataclass(frozen=True)
class Rule:
    """One HF tensor family <-> one param path; `to_jax`/`to_hf` only reshape/transpose.

    `hf` and `path` are templates with {0} = layer index and {1} = a sub-module name.
    """

    hf: str
    path: str
    to_jax: Callable[[np.ndarray, ModelConfig], np.ndarray]
    to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]

    @property
    def hf_regex(self) -> re.Pattern:
        return _template_regex(self.hf, re.escape)

    @property
    def path_regex(self) -> re.Pattern:
        return _template_regex(self.path, re.escape)


def _t(x: np.ndarray, c: ModelConfig) -> np.ndarray:
    return x.T


def _same(x: np.ndarray, c: ModelConfig) -> np.ndarray:
    return x


def _heads_in(heads: Callable[[ModelConfig], tuple[int, int]]) -> tuple[Callable, Callable]:
    """[H*D, E] (torch Linear) <-> [E, H, D] kernel."""
    def to_jax(x, c):
        h, d = heads(c)
        return x.T.reshape(x.shape[1], h, d)

    def to_hf(x, c):
        return x.reshape(x.shape[0], -1).T

    return to_jax, to_hf


def _heads_bias(heads: Callable[[ModelConfig], tuple[int, int]]) -> tuple[Callable, Callable]:
    def to_jax(x, c):
        return x.reshape(heads(c))

    def to_hf(x, c):
        return x.reshape(-1)

    return to_jax, to_hf


def _heads_out(heads: Callable[[ModelConfig], tuple[int, int]]) -> tuple[Callable, Callable]:
    """[E, H*D] (torch Linear) <-> [H, D, E] kernel."""
    def to_jax(x, c):
        h, d = heads(c)
        return x.T.reshape(h, d, x.shape[0])

    def to_hf(x, c):
        return x.reshape(-1, x.shape[-1]).T

    return to_jax, to_hf


_Q = lambda c: (c.text.num_heads, c.text.head_dim)
_KV = lambda c: (c.text.num_kv_heads, c.text.head_dim)
_VIS = lambda c: (c.vision.num_heads, c.vision.head_dim)
_QKV = lambda c: (3, c.vision.num_heads, c.vision.head_dim)


def _qkv_in():
    def to_jax(x, c):
        return x.T.reshape(x.shape[1], *_QKV(c))

    def to_hf(x, c):
        return x.reshape(x.shape[0], -1).T

    return to_jax, to_hf


def _patch_embed():
    """Conv3d weight [E, C, T, P, P] <-> Dense kernel [C*T*P*P, E] (HF's patch order)."""
    def to_jax(x, c):
        return x.reshape(x.shape[0], -1).T

    def to_hf(x, c):
        v = c.vision
        return x.T.reshape(x.shape[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)

    return to_jax, to_hf


_RULES = [
    Rule("model.embed_tokens.weight", "text/embed_tokens/embedding", _same, _same),
    Rule("model.norm.weight", "text/final_norm/scale", _same, _same),
    Rule("lm_head.weight", "text/lm_head/kernel", _t, _t),
    Rule("model.layers.{0}.input_layernorm.weight", "text/layers_{0}/input_norm/scale", _same, _same),
    Rule("model.layers.{0}.post_attention_layernorm.weight", "text/layers_{0}/post_attn_norm/scale", _same, _same),
    Rule("model.layers.{0}.self_attn.q_proj.weight", "text/layers_{0}/q_proj/kernel", *_heads_in(_Q)),
    Rule("model.layers.{0}.self_attn.q_proj.bias", "text/layers_{0}/q_proj/bias", *_heads_bias(_Q)),
    Rule("model.layers.{0}.self_attn.k_proj.weight", "text/layers_{0}/k_proj/kernel", *_heads_in(_KV)),
    Rule("model.layers.{0}.self_attn.k_proj.bias", "text/layers_{0}/k_proj/bias", *_heads_bias(_KV)),
    Rule("model.layers.{0}.self_attn.v_proj.weight", "text/layers_{0}/v_proj/kernel", *_heads_in(_KV)),
    Rule("model.layers.{0}.self_attn.v_proj.bias", "text/layers_{0}/v_proj/bias", *_heads_bias(_KV)),
    Rule("model.layers.{0}.self_attn.o_proj.weight", "text/layers_{0}/o_proj/kernel", *_heads_out(_Q)),
    Rule("model.layers.{0}.mlp.{1}.weight", "text/layers_{0}/mlp/{1}/kernel", _t, _t),
    Rule("visual.patch_embed.proj.weight", "visual/patch_embed/kernel", *_patch_embed()),
    Rule("visual.blocks.{0}.{1}.weight", "visual/blocks_{0}/{1}/scale", _same, _same),
    Rule("visual.blocks.{0}.attn.qkv.weight", "visual/blocks_{0}/qkv/kernel", *_qkv_in()),
    Rule("visual.blocks.{0}.attn.qkv.bias", "visual/blocks_{0}/qkv/bias", *_heads_bias(_QKV)),
    Rule("visual.blocks.{0}.attn.proj.weight", "visual/blocks_{0}/proj/kernel", *_heads_out(_VIS)),
    Rule("visual.blocks.{0}.attn.proj.bias", "visual/blocks_{0}/proj/bias", _same, _same),
    Rule("visual.blocks.{0}.mlp.{1}.weight", "visual/blocks_{0}/mlp/{1}/kernel", _t, _t),
    Rule("visual.blocks.{0}.mlp.{1}.bias", "visual/blocks_{0}/mlp/{1}/bias", _same, _same),
    Rule("visual.merger.ln_q.weight", "visual/merger/ln_q/scale", _same, _same),
    Rule("visual.merger.mlp.{0}.weight", "visual/merger/mlp_{0}/kernel", _t, _t),
    Rule("visual.merger.mlp.{0}.bias", "visual/merger/mlp_{0}/bias", _same, _same),
]
_COMPILED = [(rule.hf_regex, rule.path_regex, rule) for rule in _RULES]


def canonical_name(name: str) -> str:
    """Maps the newer transformers layout onto the released one."""
    if name.startswith("model.visual."):
        return name[len("model."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


def param_path(name: str, compiled: list | None = None,
               canonical: Callable[[str], str] = canonical_name) -> tuple[Rule, str] | None:
    """(rule, param path) of an HF tensor name under `compiled` rules (default: Qwen2.5-VL's), or
    None if the name is not the model's."""
    name = canonical(name)
    for hf_regex, _, rule in (_COMPILED if compiled is None else compiled):
        match = hf_regex.match(name)
        if match:
            return rule, rule.path.format(*match.groups())
    return None


def hf_name(path: str) -> str | None:
    """The released-layout HF tensor name of a per-layer param path, e.g.
    'text/layers_0/q_proj/kernel' -> 'model.layers.0.self_attn.q_proj.weight'; None if not ours."""
    for _, path_regex, rule in _COMPILED:
        match = path_regex.match(path)
        if match:
            return rule.hf.format(*match.groups())
    return None


def compile_rules(rules: list[Rule]) -> list[tuple[re.Pattern, re.Pattern, Rule]]:
    return [(rule.hf_regex, rule.path_regex, rule) for rule in rules]


def _expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    from sif_jax.model.family import family_of  # local: avoids a cycle at import time

    per_layer = config.replace(scan_layers=False)
    shapes = jax.eval_shape(lambda: family_of(config).init_params(per_layer, jax.random.key(0)))
    flat = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        flat["/".join(k.key for k in keys)] = tuple(leaf.shape)
    return flat


def _set(tree: Params, path: str, value: np.ndarray) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        names = sorted(set(weight_map.values()))
    else:
        names = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if not names:
        raise FileNotFoundError(f"{path}: no *.safetensors files (and no index)")
    for n in names:
        if not os.path.exists(os.path.join(path, n)):
            raise FileNotFoundError(f"{path}: shard {n} named in the index is missing")
    return [os.path.join(path, n) for n in names]


def read_hf_config(path: str | os.PathLike) -> dict:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {os.fspath(path)!r} does not exist")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{os.fspath(path)}: no config.json")
    with open(cfg_path) as f:
        return json.load(f)


def checkpoint_dtype(hf_config: dict, dtype: str | None) -> str:
    """`dtype`, or the checkpoint's `torch_dtype` / `dtype` (float32 if absent); ValueError if unknown."""
    dtype = dtype or {"bfloat16": "bfloat16", "float16": "float16"}.get(
        str(hf_config.get("torch_dtype") or hf_config.get("dtype")), "float32"
    )
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of {sorted(DTYPES)}")
    return dtype


def load_hf_checkpoint(
    path: str | os.PathLike, *, dtype: str | None = None, **config_overrides: Any
) -> tuple[Any, Params]:
    """Reads a local HF checkpoint directory of any registered model family (`sif_jax.model.family`;
    the family comes from config.json's `model_type`).

    Args:
      path: a directory with config.json and *.safetensors (sharded or not).
      dtype: "float32" | "bfloat16" | "float16" for the params (and compute); None keeps the
        checkpoint's `torch_dtype` (float32 if absent).
      config_overrides: fields of the family's config to set (e.g. attention_backend, scan_layers).

    Returns:
      (config, params) with params as NumPy arrays in the param layout of the family's module for
      that config (stacked [layers, ...] per-layer tensors when `scan_layers=True`).
    """
    from sif_jax.model.family import family_for_hf_config

    path = os.fspath(path)
    hf_config = read_hf_config(path)
    dtype = checkpoint_dtype(hf_config, dtype)
    family = family_for_hf_config(hf_config)
    config = family.from_hf_config(hf_config, dtype=dtype, param_dtype=dtype, **config_overrides)
    compiled, canonical = family.hf_rules()
    params = load_params(path, config, compiled, canonical, family.display_name)
    if config.scan_layers:
        params = stack_layers(params, config)
    return config, params


def load_params(path: str, config: Any, compiled: list, canonical: Callable[[str], str], what: str) -> Params:
    """Per-layer params from the safetensors under `path` by the rules `compiled`; every tensor is
    checked (unknown, duplicate, mis-shaped or missing: ValueError naming it)."""
    expected = _expected_shapes(config)
    target = np.dtype(DTYPES[config.param_dtype])
    params: Params = {}
    seen: dict[str, str] = {}
    for file in _files(path):
        st = SafetensorsFile(file)
        for name in st.keys():
            found = param_path(name, compiled, canonical)
            if found is None:
                raise ValueError(f"{file}: tensor {name!r} is not part of a {what} model")
            rule, ppath = found
            if ppath == "text/lm_head/kernel" and config.text.tie_word_embeddings:
                continue  # some tied checkpoints also store lm_head; the embedding is used
            if ppath not in expected:
                raise ValueError(f"{file}: tensor {name!r} -> {ppath} does not exist for this config")
            if ppath in seen:
                raise ValueError(f"{file}: tensor {name!r} duplicates {seen[ppath]!r}")
            hf_shape = rule.to_hf(np.empty(expected[ppath], np.int8), config).shape
            if st.shape(name) != tuple(hf_shape):
                raise ValueError(
                    f"{file}: tensor {name!r} has shape {list(st.shape(name))}; this config needs {list(hf_shape)}"
                )
            value = rule.to_jax(st.get(name), config)
            _set(params, ppath, value.astype(target, copy=False))
            seen[ppath] = name
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise ValueError(f"{path}: missing tensors for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return params


def hf_tensors(config: Any, params: Params) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, array) for every param (the layout `save_hf_checkpoint` writes); `params` in either
    layout (stacked layers are split into one tensor per layer)."""
    from sif_jax.model.family import family_of

    compiled, _ = family_of(config).hf_rules()
    params = to_layout(params, config.replace(scan_layers=False))
    flat = {
        "/".join(k.key for k in keys): leaf
        for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    for ppath, leaf in flat.items():
        for _, path_regex, rule in compiled:
            match = path_regex.match(ppath)
            if match:
                yield rule.hf.format(*match.groups()), np.asarray(rule.to_hf(np.asarray(leaf), config))
                break
        else:
            raise ValueError(f"param {ppath!r} has no Hugging Face name")


def save_hf_checkpoint(
    config: Any,
    params: Params,
    path: str | os.PathLike,
    *,
    max_shard_bytes: int = 5 * 2**30,
) -> None:
    """Writes `config.json` and safetensors (sharded with an index above `max_shard_bytes`)."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tensors = list(hf_tensors(config, params))
    shards: list[list[tuple[str, np.ndarray]]] = [[]]
    size = 0
    for name, array in tensors:
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, array))
        size += array.nbytes
    if len(shards) == 1:
        write_safetensors(os.path.join(path, "model.safetensors"), shards[0])
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(os.path.join(path, file), shard)
            weight_map.update({name: file for name, _ in shard})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": sum(a.nbytes for _, a in tensors)},
                       "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config.to_hf_config(), f, indent=2)
