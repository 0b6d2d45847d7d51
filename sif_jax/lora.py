"""Low-rank adapters (LoRA, Hu et al. 2021, arXiv:2106.09685) over a frozen base, functionally.

A targeted kernel W (a `DenseGeneral` kernel `[*lead, *in, *out]`: `lead` is the stacked-layer
axis of `scan_layers` params, `in` the contracted input dims, `out` the output dims) gets two
trainable factors

    A float32 [*lead, *in, r]     (PEFT's lora_A, initialised uniform(-1/sqrt(fan_in), +1/sqrt(fan_in)))
    B float32 [*lead, r, *out]    (PEFT's lora_B, initialised to zero, so training starts at the base)

and the model runs with W_eff = W + (alpha / r) * A @ B (PEFT's default scaling, no rsLoRA).
`merge` builds the W_eff tree from the base and the adapters inside the jitted loss/sampler, so
the model code is unchanged and W_eff is a transient; the gradient reaches A and B through the
merge: dL/dA = s * dL/dW_eff @ B^T and dL/dB = s * A^T @ dL/dW_eff (s = alpha / r). The base is
never updated and never copied: with adapters off (`adapters=None`) it is the KL reference.

Why not qwix's LoRA (`qwix.LoraProvider` / `apply_lora_to_model`, which Tunix uses): it works by
intercepting `dot_general` inside a wrapped Linen model and creates `<param>_lora_a/_lora_b` inside
the model's own param tree. Every caller here builds the model from its config (`Qwen25VL(config)`
in scoring, sampler, KV cache, SFT, evaluation), so the wrapped model would have to be threaded
through all of them, and the param tree (HF conversion, sharding rules, optimizer, checkpoints)
would change shape. The functional merge below keeps the model and its callers unchanged.

Adapters are a nested dict that mirrors the params' paths down to the kernel, whose entry is
`{"a": A, "b": B}`, e.g. `adapters["text"]["layers_0"]["q_proj"]["kernel"]["a"]`.

Dropout (`LoraConfig.dropout`): PEFT drops entries of the adapter's input x per token; on the
merged weight this becomes a feature mask on A's input rows, `A * m / (1 - p)` with
m ~ Bernoulli(1 - p) over the `in` dims, one mask per step shared by every token (same
expectation, coarser noise). It applies only where a `dropout_rng` is given (the training
losses), never in sampling, scoring or export.

Quantised frozen base (`LoraConfig.base_dtype`, QLoRA-style; Dettmers et al. 2023,
arXiv:2305.14314): the adapted kernels of the frozen base may be stored as "int8" or
"float8_e4m3fn" with one float32 scale per output channel (absmax, as LLM.int8()'s vector-wise
quantisation, Dettmers et al. 2022, arXiv:2208.07339; QLoRA's NF4 blocks are not implemented):

    s[*lead, *out] = max over *in of |W| / Q      (Q = 127 for int8, 448 for float8_e4m3fn;
                                                   s = 1 / Q where the channel is all zero)
    int8:  q = clip(round(W / s), -127, 127)      float8: q = float8_e4m3fn(W / s) (round to nearest)
    dequantised W~ = float32(q) * s               (|W~ - W| <= s / 2 for int8)

Such a kernel's entry in the base tree is the dict {"quantized": q [same shape as W], "scale": s
float32 [*lead, 1 per in dim, *out]} (`quantize_kernel`). `merge` dequantises it where it builds
W_eff = W~ + (alpha / r) A @ B, inside the jitted loss / sampler / scorer, to the dtype of the
base's unquantised params; `dequantize_params` turns a whole base into plain params (the
adapter-off reference, also inside the scorer's jit). The quantised base is what stays resident;
W~ exists only as a transient of the programs that use it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

Params = Any

# All linear layers of the language model (attention q/k/v/o and the gated MLP), per-layer or
# stacked (`text/layers/...`). The LM head, the embeddings and the vision tower are not targeted.
DEFAULT_TARGETS: tuple[str, ...] = (
    r"^text/layers(_\d+)?/(q_proj|k_proj|v_proj|o_proj|mlp/(gate_proj|up_proj|down_proj))/kernel$",
)

# Logical name of the adapters' rank axis (see `AdapterSpec.factor_axes`).
RANK_AXIS = "lora_rank"
# Kernels whose module contracts two input dims (`axis=(-2, -1)`: heads x head_dim); others one.
_TWO_INPUT_DIMS = ("o_proj", "proj", "out_proj")
# Kernels that are not a torch Linear in Hugging Face (a Conv3d / Conv2d), so no PEFT Linear adapter.
_NOT_LINEAR = ("visual/patch_embed/kernel", "vision_tower/patch_embedding/kernel")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r >= 1; alpha > 0 (scale = alpha / r); dropout in [0, 1); targets: regular
    expressions (`re.search`) over '/'-joined param paths such as 'text/layers_3/mlp/up_proj/kernel'."""

    rank: int
    alpha: float
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    base_dtype: str = ""  # "" (the params' own dtype), "int8" or "float8_e4m3fn": see the module doc

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def from_run_config(config: Any) -> LoraConfig | None:
    """The `config.lora` block of a run config (a ConfigDict or a `run_config.RunConfig`) as a
    LoraConfig (`run_config.LoraSettings.config`); None when `lora.rank` is 0 (off)."""
    from sif_jax.run_config import build  # run_config imports this module

    return build(config, check_files=False).lora.config


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    """One adapted kernel: its path, shape, dtype, logical axes and how its dims split."""

    path: str
    shape: tuple[int, ...]
    axes: tuple[Any, ...]
    n_lead: int  # 1 for stacked (scan) layer params, else 0
    n_in: int

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.shape[self.n_lead:self.n_lead + self.n_in]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.shape[self.n_lead + self.n_in:]

    @property
    def lead_shape(self) -> tuple[int, ...]:
        return self.shape[:self.n_lead]

    def factor_shapes(self, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(A shape [*lead, *in, r], B shape [*lead, r, *out])."""
        return (*self.lead_shape, *self.in_shape, rank), (*self.lead_shape, rank, *self.out_shape)

    def factor_axes(self) -> tuple[PartitionSpec, PartitionSpec]:
        """Logical axes: A follows the kernel's input axes, B its output axes, and the rank axis is
        `RANK_AXIS` ('fsdp' in `parallel.DEFAULT_RULES`; flax gives a mesh axis to the first
        logical axis that asks for it, so r only takes 'fsdp' where the factor's kernel axes left
        it unused, e.g. B of q_proj [r, heads, head_dim], which would otherwise be whole on
        every FSDP chip)."""
        lead, n_in = self.axes[:self.n_lead], self.axes[self.n_lead:self.n_lead + self.n_in]
        out = self.axes[self.n_lead + self.n_in:]
        return PartitionSpec(*lead, *n_in, RANK_AXIS), PartitionSpec(*lead, RANK_AXIS, *out)


def _path_str(keys: Sequence[Any]) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in keys)


def adapter_specs(boxed_params: Params, lora: LoraConfig) -> dict[str, AdapterSpec]:
    """The kernels `lora.targets` select, from abstract params still in their
    `nn.LogicallyPartitioned` boxes (`vlm.abstract_boxed_params`).

    Raises:
      ValueError: a pattern that is not a regular expression, one that selects no kernel, or
        one that selects a kernel with no Hugging Face Linear counterpart (the patch embedding).
    """
    patterns = []
    for pattern in lora.targets:
        try:
            patterns.append(re.compile(pattern))
        except re.error as e:
            raise ValueError(f"lora.targets: {pattern!r} is not a regular expression ({e})") from None
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
    specs: dict[str, AdapterSpec] = {}
    used = [False] * len(patterns)
    for keys, leaf in leaves:
        path = _path_str(keys)
        hits = [bool(p.search(path)) for p in patterns]
        if not any(hits) or not path.endswith("/kernel"):
            continue
        if path in _NOT_LINEAR:
            raise ValueError(f"lora.targets: {path!r} (a convolution in Hugging Face) cannot take a LoRA adapter")
        used = [u or h for u, h in zip(used, hits, strict=True)]
        axes = tuple(leaf.names) if isinstance(leaf, nn.LogicallyPartitioned) else (None,) * leaf.ndim
        value = leaf.value if isinstance(leaf, nn.LogicallyPartitioned) else leaf
        n_lead = 1 if axes and axes[0] == "layers" else 0
        n_in = 2 if path.split("/")[-2] in _TWO_INPUT_DIMS else 1
        specs[path] = AdapterSpec(path, tuple(value.shape), axes, n_lead, n_in)
    for pattern, u in zip(lora.targets, used, strict=True):
        if not u:
            raise ValueError(f"lora.targets: {pattern!r} matches no kernel of this model "
                             "(paths look like 'text/layers_0/q_proj/kernel')")
    return specs


def _nest(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return tree


def flatten(adapters: Params) -> dict[str, dict[str, Any]]:
    """{kernel path: {"a": A, "b": B}} of a nested adapters tree."""
    out: dict[str, dict[str, Any]] = {}

    def walk(node, prefix):
        if isinstance(node, dict) and set(node) == {"a", "b"}:
            out[prefix] = node
            return
        for k, v in node.items():
            walk(v, f"{prefix}/{k}" if prefix else str(k))

    walk(adapters, "")
    return out


def unflatten(flat: dict[str, dict[str, Any]]) -> Params:
    return _nest(flat)


def init_adapters(specs: dict[str, AdapterSpec], rank: int, rng: jax.Array) -> Params:
    """A uniform(+-1/sqrt(fan_in)) (PEFT's kaiming_uniform(a=sqrt(5)) bound), B zero; float32.
    Traceable (jit / eval_shape)."""
    flat = {}
    for i, (path, spec) in enumerate(sorted(specs.items())):
        a_shape, b_shape = spec.factor_shapes(rank)
        bound = 1.0 / math.sqrt(math.prod(spec.in_shape))
        a = jax.random.uniform(jax.random.fold_in(rng, i), a_shape, jnp.float32, -bound, bound)
        flat[path] = {"a": a, "b": jnp.zeros(b_shape, jnp.float32)}
    return unflatten(flat)


def adapter_shapes(specs: dict[str, AdapterSpec], rank: int) -> Params:
    """ShapeDtypeStructs of `init_adapters`' tree."""
    return unflatten({path: dict(zip("ab", (jax.ShapeDtypeStruct(s, jnp.float32) for s in spec.factor_shapes(rank)),
                                     strict=True)) for path, spec in specs.items()})


def adapter_logical_axes(specs: dict[str, AdapterSpec]) -> Params:
    """PartitionSpecs of logical axes matching `init_adapters`' tree (see `AdapterSpec.factor_axes`)."""
    return unflatten({path: dict(zip("ab", spec.factor_axes(), strict=True)) for path, spec in specs.items()})


def boxed_adapter_shapes(specs: dict[str, AdapterSpec], rank: int) -> Params:
    """`adapter_shapes` inside `nn.LogicallyPartitioned` boxes (for `parallel.optimizer_shardings`)."""
    shapes, axes = flatten(adapter_shapes(specs, rank)), flatten(adapter_logical_axes(specs))
    return unflatten({p: {k: nn.LogicallyPartitioned(shapes[p][k], tuple(axes[p][k])) for k in "ab"}
                      for p in shapes})


def delta(a: jax.Array, b: jax.Array, kernel_ndim: int) -> jax.Array:
    """A @ B over the rank axis: [*lead, *in, r] x [*lead, r, *out] -> [*lead, *in, *out] float32.
    The number of lead dims follows from the ranks: a.ndim + b.ndim - 2 - kernel_ndim."""
    n_lead = a.ndim + b.ndim - 2 - kernel_ndim
    letters = "abcdefghijklmnopqrstuvwxy"
    lead, ins = letters[:n_lead], letters[n_lead:a.ndim - 1]
    outs = letters[a.ndim - 1:a.ndim - 1 + b.ndim - 1 - n_lead]
    return jnp.einsum(f"{lead}{ins}z,{lead}z{outs}->{lead}{ins}{outs}", a.astype(jnp.float32),
                      b.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)


def _dropout_a(a: jax.Array, p: float, rng: jax.Array) -> jax.Array:
    """A with whole input rows dropped (one Bernoulli(1 - p) per [*lead, *in] row, shared over r)."""
    keep = jax.random.bernoulli(rng, 1.0 - p, (*a.shape[:-1], 1))
    return jnp.where(keep, a / (1.0 - p), 0.0)


def merge(base: Params, adapters: Params | None, scale: float, *, dropout: float = 0.0,
          dropout_rng: jax.Array | None = None) -> Params:
    """The params the model runs with: every adapted kernel W replaced by
    (W + scale * A @ B) in W's dtype (the sum in float32); other leaves are the base's own.
    `adapters=None` returns `base` (the adapter-off model, e.g. the KL reference). Quantised
    kernels of `base` (`quantize_base`) enter as W~ = float32(q) * s, in the dtype of the base's
    unquantised params.

    Raises ValueError naming an adapter whose kernel the base lacks or whose shapes do not fit it.
    """
    if adapters is None:
        return dequantize_params(base)
    dtype = _plain_dtype(base)
    flat = flatten(adapters)
    out = dict(base)
    for i, (path, ab) in enumerate(sorted(flat.items())):
        keys = path.split("/")
        node = out
        for k in keys[:-1]:
            if not isinstance(node, dict) or k not in node:
                raise ValueError(f"LoRA adapter {path!r}: the base params have no such kernel")
            node[k] = dict(node[k])
            node = node[k]
        w = node.get(keys[-1])
        if w is None:
            raise ValueError(f"LoRA adapter {path!r}: the base params have no such kernel")
        if is_quantized(w):
            w = dequantize_kernel(w, dtype)
        a, b = ab["a"], ab["b"]
        if dropout > 0 and dropout_rng is not None:
            a = _dropout_a(a, dropout, jax.random.fold_in(dropout_rng, i))
        d = delta(a, b, w.ndim)
        if d.shape != tuple(w.shape):
            raise ValueError(f"LoRA adapter {path!r}: A {tuple(a.shape)} @ B {tuple(b.shape)} gives {d.shape}, "
                             f"the kernel is {tuple(w.shape)}")
        node[keys[-1]] = (w.astype(jnp.float32) + scale * d).astype(w.dtype)
    return dequantize_params(out)


def count(adapters: Params) -> int:
    """Number of trainable adapter parameters."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(adapters)))


# --- quantised frozen base (see the module doc) ----------------------------------------------------

BASE_DTYPES = ("", "int8", "float8_e4m3fn")
_QMAX = {"int8": 127.0, "float8_e4m3fn": 448.0}  # int8: symmetric [-127, 127]; e4m3fn's largest finite value
BASE_DTYPES = ("", *_QMAX)  # lora.base_dtype: "" keeps the params' dtype
_QKEYS = frozenset(("quantized", "scale"))


def is_quantized(node: Any) -> bool:
    """Whether a base-tree node is a quantised kernel (`quantize_kernel`'s dict)."""
    return isinstance(node, dict) and set(node) == _QKEYS


def quantize_kernel(w: jax.Array, n_lead: int, n_in: int, base_dtype: str) -> dict[str, jax.Array]:
    """{"quantized": q [w.shape] int8 / float8_e4m3fn, "scale": s float32 [*lead, 1 x n_in, *out]}
    of a kernel [*lead, *in, *out], one absmax scale per output channel (module doc formula).

    Raises ValueError for a `base_dtype` not in ("int8", "float8_e4m3fn")."""
    if base_dtype not in _QMAX:
        raise ValueError(f"lora.base_dtype: {base_dtype!r} is not a quantised dtype; choose one of {sorted(_QMAX)}")
    qmax = _QMAX[base_dtype]
    w32 = w.astype(jnp.float32)
    absmax = jnp.max(jnp.abs(w32), axis=tuple(range(n_lead, n_lead + n_in)), keepdims=True)
    s = jnp.where(absmax > 0, absmax, 1.0) / qmax
    if base_dtype == "int8":
        q = jnp.clip(jnp.round(w32 / s), -qmax, qmax).astype(jnp.int8)
    else:
        q = jnp.clip(w32 / s, -qmax, qmax).astype(jnp.float8_e4m3fn)
    return {"quantized": q, "scale": s}


def dequantize_kernel(qk: dict[str, jax.Array], dtype: Any = jnp.float32) -> jax.Array:
    """W~ = float32(q) * s in `dtype` (same shape as the original kernel)."""
    return (qk["quantized"].astype(jnp.float32) * qk["scale"].astype(jnp.float32)).astype(dtype)


def _plain_dtype(tree: Params) -> Any:
    """The dtype of the first unquantised floating leaf (what quantised kernels dequantise to)."""
    found: list[Any] = []

    def visit(node):
        if found:
            return
        if is_quantized(node):
            return
        if isinstance(node, dict):
            for k in sorted(node):
                visit(node[k])
        elif hasattr(node, "dtype") and jnp.issubdtype(node.dtype, jnp.floating):
            found.append(node.dtype)

    visit(tree)
    return found[0] if found else jnp.float32


def dequantize_params(tree: Params) -> Params:
    """`tree` with every quantised kernel replaced by W~ in the dtype of its unquantised params;
    a tree without quantised kernels is returned as is."""
    if not _has_quantized(tree):
        return tree
    dtype = _plain_dtype(tree)

    def walk(node):
        if is_quantized(node):
            return dequantize_kernel(node, dtype)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return node

    return walk(tree)


def _has_quantized(node: Any) -> bool:
    if is_quantized(node):
        return True
    return isinstance(node, dict) and any(_has_quantized(v) for v in node.values())


def _replace_kernels(tree: Params, specs: dict[str, AdapterSpec], fn) -> Params:
    """`tree` (nested dicts) with the leaf at each spec's path replaced by fn(leaf, spec)."""
    out = dict(tree)
    for path, spec in sorted(specs.items()):
        keys = path.split("/")
        node = out
        for k in keys[:-1]:
            if not isinstance(node, dict) or k not in node:
                raise ValueError(f"lora.base_dtype: the base params have no kernel {path!r}")
            node[k] = dict(node[k])
            node = node[k]
        if keys[-1] not in node:
            raise ValueError(f"lora.base_dtype: the base params have no kernel {path!r}")
        node[keys[-1]] = fn(node[keys[-1]], spec)
    return out


def quantize_base(params: Params, specs: dict[str, AdapterSpec], base_dtype: str) -> Params:
    """The frozen base with the kernels of `specs` (the adapted ones) quantised to `base_dtype`
    (`quantize_kernel`); `base_dtype=""` returns `params`. Traceable (jit / eval_shape).

    Raises ValueError for an unknown `base_dtype` or a spec path missing from `params`."""
    if not base_dtype:
        return params
    if base_dtype not in BASE_DTYPES:
        raise ValueError(f"lora.base_dtype: {base_dtype!r} is not one of {BASE_DTYPES}")
    return _replace_kernels(params, specs, lambda w, spec: quantize_kernel(w, spec.n_lead, spec.n_in, base_dtype))


def quantized_shardings(param_shardings: Params, specs: dict[str, AdapterSpec], base_dtype: str) -> Params:
    """Shardings of `quantize_base`'s tree from the params' (NamedSharding leaves): q keeps its
    kernel's sharding, the scale the same without the (size-1) input dims' mesh axes."""
    if not base_dtype:
        return param_shardings

    def fn(sharding, spec: AdapterSpec):
        pspec = list(sharding.spec) + [None] * (len(spec.shape) - len(sharding.spec))
        for i in range(spec.n_lead, spec.n_lead + spec.n_in):
            pspec[i] = None
        return {"quantized": sharding, "scale": jax.sharding.NamedSharding(sharding.mesh, PartitionSpec(*pspec))}

    return _replace_kernels(param_shardings, specs, fn)
