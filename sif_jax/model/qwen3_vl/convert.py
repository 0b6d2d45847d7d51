"""Hugging Face Qwen3-VL safetensors <-> sif_jax Qwen3-VL params.

Key layout of the released checkpoints (and of transformers' `save_pretrained`):
`model.visual.*`, `model.language_model.*`, `lm_head.weight` (absent when the embeddings are tied).
`load_hf_checkpoint(path)` reads `config.json` and `*.safetensors` (single or sharded with
`model.safetensors.index.json`) tensor by tensor; `save_hf_checkpoint` writes the same layout.
Every tensor is checked: an unknown, duplicated, missing or mis-shaped tensor is an error that names
it. Both param layouts (per-layer and, with `scan_layers=True`, stacked) are read and written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from sif_jax.convert.hf import Rule, _files, read_hf_config
from sif_jax.convert.safetensors_io import SafetensorsFile, write_safetensors
from sif_jax.model.layers import DTYPES
from sif_jax.model.layout import stack_layers, to_layout
from sif_jax.model.qwen3_vl.config import Qwen3VLConfig

Params = dict[str, Any]
Shape = Callable[[Qwen3VLConfig], tuple[int, ...]]


def _same(x: np.ndarray, c: Qwen3VLConfig) -> np.ndarray:
    return x


def _t(x: np.ndarray, c: Qwen3VLConfig) -> np.ndarray:
    return x.T


def _heads_in(heads: Shape) -> tuple[Callable, Callable]:
    """torch Linear weight [prod(heads), E] <-> kernel [E, *heads]."""
    return (lambda x, c: x.T.reshape(x.shape[1], *heads(c)), lambda x, c: x.reshape(x.shape[0], -1).T)


def _heads_bias(heads: Shape) -> tuple[Callable, Callable]:
    return (lambda x, c: x.reshape(heads(c)), lambda x, c: x.reshape(-1))


def _heads_out(heads: Shape) -> tuple[Callable, Callable]:
    """torch Linear weight [E, H*D] <-> kernel [H, D, E]."""
    return (lambda x, c: x.T.reshape(*heads(c), x.shape[0]), lambda x, c: x.reshape(-1, x.shape[-1]).T)


def _patch_embed() -> tuple[Callable, Callable]:
    """Conv3d weight [E, C, T, P, P] <-> Dense kernel [C*T*P*P, E] (HF's patch flattening order)."""
    def to_hf(x, c):
        v = c.vision
        return x.T.reshape(x.shape[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)

    return (lambda x, c: x.reshape(x.shape[0], -1).T, to_hf)


_Q = lambda c: (c.text.num_heads, c.text.head_dim)  # noqa: E731
_KV = lambda c: (c.text.num_kv_heads, c.text.head_dim)  # noqa: E731
_VIS = lambda c: (c.vision.num_heads, c.vision.head_dim)  # noqa: E731
_QKV = lambda c: (3, c.vision.num_heads, c.vision.head_dim)  # noqa: E731

V, T = "model.visual", "model.language_model"
# Order matters for HF name -> path: the norm rules come before the `{1}` catch-alls.
_RULES = [
    Rule("lm_head.weight", "text/lm_head/kernel", _t, _t),
    Rule(f"{T}.embed_tokens.weight", "text/embed_tokens/embedding", _same, _same),
    Rule(f"{T}.norm.weight", "text/final_norm/scale", _same, _same),
    Rule(f"{T}.layers.{{0}}.input_layernorm.weight", "text/layers_{0}/input_norm/scale", _same, _same),
    Rule(f"{T}.layers.{{0}}.post_attention_layernorm.weight", "text/layers_{0}/post_attn_norm/scale", _same, _same),
    Rule(f"{T}.layers.{{0}}.self_attn.q_norm.weight", "text/layers_{0}/q_norm/scale", _same, _same),
    Rule(f"{T}.layers.{{0}}.self_attn.k_norm.weight", "text/layers_{0}/k_norm/scale", _same, _same),
    Rule(f"{T}.layers.{{0}}.self_attn.q_proj.weight", "text/layers_{0}/q_proj/kernel", *_heads_in(_Q)),
    Rule(f"{T}.layers.{{0}}.self_attn.q_proj.bias", "text/layers_{0}/q_proj/bias", *_heads_bias(_Q)),
    Rule(f"{T}.layers.{{0}}.self_attn.k_proj.weight", "text/layers_{0}/k_proj/kernel", *_heads_in(_KV)),
    Rule(f"{T}.layers.{{0}}.self_attn.k_proj.bias", "text/layers_{0}/k_proj/bias", *_heads_bias(_KV)),
    Rule(f"{T}.layers.{{0}}.self_attn.v_proj.weight", "text/layers_{0}/v_proj/kernel", *_heads_in(_KV)),
    Rule(f"{T}.layers.{{0}}.self_attn.v_proj.bias", "text/layers_{0}/v_proj/bias", *_heads_bias(_KV)),
    Rule(f"{T}.layers.{{0}}.self_attn.o_proj.weight", "text/layers_{0}/o_proj/kernel", *_heads_out(_Q)),
    Rule(f"{T}.layers.{{0}}.self_attn.o_proj.bias", "text/layers_{0}/o_proj/bias", _same, _same),
    Rule(f"{T}.layers.{{0}}.mlp.{{1}}.weight", "text/layers_{0}/mlp/{1}/kernel", _t, _t),
    Rule(f"{V}.patch_embed.proj.weight", "visual/patch_embed/kernel", *_patch_embed()),
    Rule(f"{V}.patch_embed.proj.bias", "visual/patch_embed/bias", _same, _same),
    Rule(f"{V}.pos_embed.weight", "visual/pos_embed", _same, _same),
    *(Rule(f"{V}.blocks.{{0}}.{norm}.{hf}", f"visual/blocks_{{0}}/{norm}/{ours}", _same, _same)
      for norm in ("norm1", "norm2") for hf, ours in (("weight", "scale"), ("bias", "bias"))),
    Rule(f"{V}.blocks.{{0}}.attn.qkv.weight", "visual/blocks_{0}/qkv/kernel", *_heads_in(_QKV)),
    Rule(f"{V}.blocks.{{0}}.attn.qkv.bias", "visual/blocks_{0}/qkv/bias", *_heads_bias(_QKV)),
    Rule(f"{V}.blocks.{{0}}.attn.proj.weight", "visual/blocks_{0}/proj/kernel", *_heads_out(_VIS)),
    Rule(f"{V}.blocks.{{0}}.attn.proj.bias", "visual/blocks_{0}/proj/bias", _same, _same),
    Rule(f"{V}.blocks.{{0}}.mlp.{{1}}.weight", "visual/blocks_{0}/{1}/kernel", _t, _t),
    Rule(f"{V}.blocks.{{0}}.mlp.{{1}}.bias", "visual/blocks_{0}/{1}/bias", _same, _same),
    Rule(f"{V}.merger.norm.weight", "visual/merger/norm/scale", _same, _same),
    Rule(f"{V}.merger.norm.bias", "visual/merger/norm/bias", _same, _same),
    Rule(f"{V}.merger.linear_fc{{0}}.weight", "visual/merger/linear_fc{0}/kernel", _t, _t),
    Rule(f"{V}.merger.linear_fc{{0}}.bias", "visual/merger/linear_fc{0}/bias", _same, _same),
    Rule(f"{V}.deepstack_merger_list.{{0}}.norm.weight", "visual/deepstack_merger_{0}/norm/scale", _same, _same),
    Rule(f"{V}.deepstack_merger_list.{{0}}.norm.bias", "visual/deepstack_merger_{0}/norm/bias", _same, _same),
    Rule(f"{V}.deepstack_merger_list.{{0}}.{{1}}.weight", "visual/deepstack_merger_{0}/{1}/kernel", _t, _t),
    Rule(f"{V}.deepstack_merger_list.{{0}}.{{1}}.bias", "visual/deepstack_merger_{0}/{1}/bias", _same, _same),
]
_COMPILED = [(rule.hf_regex, rule.path_regex, rule) for rule in _RULES]


def param_path(name: str) -> tuple[Rule, str] | None:
    """(rule, param path) of an HF tensor name, or None if the name is not part of Qwen3-VL."""
    for hf_regex, _, rule in _COMPILED:
        match = hf_regex.match(name)
        if match:
            return rule, rule.path.format(*match.groups())
    return None


def _expected_shapes(config: Qwen3VLConfig) -> dict[str, tuple[int, ...]]:
    from sif_jax.model.qwen3_vl.model import init_params  # local: avoids an import cycle

    shapes = jax.eval_shape(lambda: init_params(config.replace(scan_layers=False), jax.random.key(0)))
    return {"/".join(k.key for k in keys): tuple(leaf.shape)
            for keys, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}


def _set(tree: Params, path: str, value: np.ndarray) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def load_hf_checkpoint(
    path: str | os.PathLike, *, dtype: str | None = None, **config_overrides: Any
) -> tuple[Qwen3VLConfig, Params]:
    """Reads a local HF Qwen3-VL checkpoint directory.

    Args:
      path: a directory with config.json and *.safetensors (sharded or not).
      dtype: "float32" | "bfloat16" | "float16" for the params (and compute); None keeps the
        checkpoint's `dtype` / `torch_dtype` (float32 if absent).
      config_overrides: fields of Qwen3VLConfig to set (e.g. attention_backend, scan_layers).

    Returns:
      (config, params) with params as NumPy arrays in the layout of `Qwen3VL` for that config.

    Raises:
      FileNotFoundError: no directory, config.json or safetensors. ValueError: a tensor that is
        unknown, duplicated, mis-shaped or missing (named in the message).
    """
    path = os.fspath(path)
    hf_config = read_hf_config(path)
    text = hf_config.get("text_config") or {}
    stored = hf_config.get("dtype") or hf_config.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
    dtype = dtype or {"bfloat16": "bfloat16", "float16": "float16"}.get(str(stored), "float32")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of {sorted(DTYPES)}")
    config = Qwen3VLConfig.from_hf_config(hf_config, dtype=dtype, param_dtype=dtype, **config_overrides)
    expected = _expected_shapes(config)
    target = np.dtype(DTYPES[dtype])
    params: Params = {}
    seen: dict[str, str] = {}
    for file in _files(path):
        st = SafetensorsFile(file)
        for name in st.keys():
            found = param_path(name)
            if found is None:
                raise ValueError(f"{file}: tensor {name!r} is not part of a Qwen3-VL model")
            rule, ppath = found
            if ppath == "text/lm_head/kernel" and config.text.tie_word_embeddings:
                continue  # a tied checkpoint may also store lm_head; the embedding is used
            if ppath not in expected:
                raise ValueError(f"{file}: tensor {name!r} -> {ppath} does not exist for this config")
            if ppath in seen:
                raise ValueError(f"{file}: tensor {name!r} duplicates {seen[ppath]!r}")
            hf_shape = rule.to_hf(np.empty(expected[ppath], np.int8), config).shape
            if st.shape(name) != tuple(hf_shape):
                raise ValueError(f"{file}: tensor {name!r} has shape {list(st.shape(name))}; this config needs "
                                 f"{list(hf_shape)}")
            _set(params, ppath, rule.to_jax(st.get(name), config).astype(target, copy=False))
            seen[ppath] = name
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise ValueError(f"{path}: missing tensors for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if config.scan_layers:
        params = stack_layers(params, config)  # type: ignore[arg-type]
    return config, params


def hf_tensors(config: Qwen3VLConfig, params: Params) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, array) for every param; `params` in either layout. Raises ValueError for a
    param with no HF name."""
    params = to_layout(params, config.replace(scan_layers=False))  # type: ignore[arg-type]
    for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        ppath = "/".join(k.key for k in keys)
        for _, path_regex, rule in _COMPILED:
            match = path_regex.match(ppath)
            if match:
                yield rule.hf.format(*match.groups()), np.asarray(rule.to_hf(np.asarray(leaf), config))
                break
        else:
            raise ValueError(f"param {ppath!r} has no Hugging Face name")


def save_hf_checkpoint(
    config: Qwen3VLConfig, params: Params, path: str | os.PathLike, *, max_shard_bytes: int = 5 * 2**30
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
            json.dump({"metadata": {"total_size": sum(a.nbytes for _, a in tensors)}, "weight_map": weight_map}, f,
                      indent=2)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config.to_hf_config(), f, indent=2)
