"""Building blocks shared by the vision tower and the decoder: RMSNorm, gated MLP, rotary."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sif_jax.model.config import REMAT_POLICIES

# The dtype names a config may use, and their JAX types: the one definition (configs, CLIs import it).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}

# Linear layers use the same normal(0.02) init as HF's `initializer_range`.
KERNEL_INIT = nn.initializers.normal(stddev=0.02)


def dense(
    features: int | Sequence[int],
    axes: tuple[str, ...],
    *,
    name: str,
    use_bias: bool,
    axis: int | Sequence[int] = -1,
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype = jnp.float32,
) -> nn.DenseGeneral:
    """A DenseGeneral whose kernel carries logical axis names `axes` (inputs then outputs)."""
    n_out = 1 if isinstance(features, int) else len(features)
    return nn.DenseGeneral(
        features=features,
        axis=axis,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(KERNEL_INIT, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-n_out:]),
        name=name,
    )


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, scaled in the input dtype (as HF's Qwen2RMSNorm)."""

    eps: float
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
            (x.shape[-1],), self.param_dtype,
        )
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return scale.astype(x.dtype) * y.astype(x.dtype)


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) — SwiGLU for the released models."""

    hidden: int
    act: str
    use_bias: bool
    axes: tuple[str, str]  # (model axis, mlp axis)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        model_axis, mlp_axis = self.axes
        gate = dense(self.hidden, (model_axis, mlp_axis), name="gate_proj", **kw)(x)
        up = dense(self.hidden, (model_axis, mlp_axis), name="up_proj", **kw)(x)
        return dense(x.shape[-1], (mlp_axis, model_axis), name="down_proj", **kw)(
            ACTIVATIONS[self.act](gate) * up
        )


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [..., heads, head_dim] by cos/sin [..., head_dim] (broadcast over heads), in f32."""
    xf = x.astype(jnp.float32)
    cos, sin = cos[..., None, :], sin[..., None, :]
    return (xf * cos + rotate_half(xf) * sin).astype(x.dtype)


def inverse_frequencies(dim: int, theta: float) -> jax.Array:
    """[dim // 2] float32: theta ** (-2i / dim)."""
    return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


# Names of the activations `remat_policy="save_attention"` keeps (jax.ad_checkpoint.checkpoint_name).
ATTENTION_OUT = "attention_out"
MLP_IN = "mlp_in"


def remat_policy(name: str):
    """The `jax.checkpoint` policy of a `ModelConfig.remat_policy` value ("none" has none).

    "full": nothing saved but the layer inputs; "dots": matmuls against weights
    (`checkpoint_dots_with_no_batch_dims`; attention's batched einsums are recomputed);
    "save_attention": the tensors named `ATTENTION_OUT` [B, L, heads, head_dim] and
    `MLP_IN` [B, L, hidden]. Raises ValueError for any other name.
    """
    policies = {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
        "save_attention": jax.checkpoint_policies.save_only_these_names(ATTENTION_OUT, MLP_IN),
    }
    assert set(policies) == set(REMAT_POLICIES) - {"none"}, "every REMAT_POLICIES name but 'none' has a policy"
    if name not in policies:
        raise ValueError(f"remat_policy={name!r}: expected one of {', '.join(map(repr, REMAT_POLICIES))}")
    return policies[name]


def layer_stack(
    layer: type[nn.Module], *, remat: str, scan: bool, length: int, in_axes: tuple
) -> type[nn.Module]:
    """The module class that runs `layer`: rematerialised per `remat` (a ModelConfig.remat_policy)
    and, with `scan`, scanned `length` times (params get a leading "layers" logical axis).

    A scanned `layer` must map (carry, *args) -> (carry, per-layer output); `in_axes` gives each
    of args `nn.broadcast` (same for every layer) or 0 (sliced along the leading layer axis).
    """
    if remat != "none":
        layer = nn.remat(layer, policy=remat_policy(remat), prevent_cse=not scan)
    if not scan:
        return layer
    return nn.scan(
        layer, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=in_axes,
        length=length, metadata_params={nn.PARTITION_NAME: "layers"},
    )


def stack_like(cache_kv, keys: list[jax.Array], values: list[jax.Array]) -> tuple | None:
    """The layers' keys/values in the form of the cache they came with: tuples of per-layer
    [B, S, kv_heads, head_dim] arrays for a per-layer cache (`KVCache.per_layer`: each layer's
    array updated in place in a decode loop, no slice or re-stack), else stacked
    [layers, B, S, kv_heads, head_dim]; None when no layer returned any."""
    if not keys:
        return None
    if cache_kv is not None and isinstance(cache_kv[0], tuple):
        return tuple(keys), tuple(values)
    return jnp.stack(keys), jnp.stack(values)
