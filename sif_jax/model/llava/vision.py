"""The CLIP vision transformer of LLaVA-1.5 (HF `CLIPVisionTransformer`), in Flax Linen.

pixel_values [N, C, S, S] -> patches of P x P pixels (a bias-free convolution with stride P, written
as a Dense over each patch flattened in (C, P, P) order) -> [class token; patches] + learned
positions -> pre-norm -> encoder layers (pre-LayerNorm, multi-head attention with biases through
`sif_jax.kernels.region_attention.attention`, quick-GELU MLP). HF's `hidden_states` are the
pre-normed embeddings (index 0) and each layer's output (index i); LLaVA reads one of them.
Layers after the feature layer and the post-norm hold parameters (so that checkpoints round-trip)
but only run when the parameters are initialised.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from sif_jax.kernels.region_attention import attention
from sif_jax.model.layers import ACTIVATIONS, ATTENTION_OUT, DTYPES, MLP_IN, dense, layer_stack
from sif_jax.model.llava.config import ClipVisionConfig


def layer_norm(eps: float, dtype, param_dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
    )


def patchify(pixel_values: jax.Array, patch_size: int) -> jax.Array:
    """[N, C, S, S] -> [N, (S/P)^2, C*P*P], patches row-major, each flattened in (C, P, P) order."""
    n, c, h, w = pixel_values.shape
    gh, gw = h // patch_size, w // patch_size
    x = pixel_values.reshape(n, c, gh, patch_size, gw, patch_size)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * patch_size * patch_size)


class ClipLayer(nn.Module):
    """x + attn(LN1(x)); x + fc2(act(fc1(LN2(x)))). x [N, T, hidden]."""

    config: ClipVisionConfig
    attention_backend: str | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=True)
        h = layer_norm(c.layer_norm_eps, self.dtype, self.param_dtype, "layer_norm1")(x)
        axes = ("vision_embed", "vision_heads", "head_dim")
        q = dense((c.num_heads, c.head_dim), axes, name="q_proj", **kw)(h)
        k = dense((c.num_heads, c.head_dim), axes, name="k_proj", **kw)(h)
        v = dense((c.num_heads, c.head_dim), axes, name="v_proj", **kw)(h)
        out = attention(q, k, v, causal=False, backend=self.attention_backend).out
        out = checkpoint_name(out, ATTENTION_OUT)
        x = x + dense(c.hidden_size, ("vision_heads", "head_dim", "vision_embed"), axis=(-2, -1),
                      name="out_proj", **kw)(out)
        h = checkpoint_name(layer_norm(c.layer_norm_eps, self.dtype, self.param_dtype, "layer_norm2")(x), MLP_IN)
        h = dense(c.intermediate_size, ("vision_embed", "vision_mlp"), name="fc1", **kw)(h)
        h = ACTIVATIONS[c.hidden_act](h)
        return x + dense(c.hidden_size, ("vision_mlp", "vision_embed"), name="fc2", **kw)(h)


class ClipVisionTower(nn.Module):
    """pixel_values float [N, C, S, S] -> hidden state `feature_layer` [N, 1 + (S/P)^2, hidden]."""

    config: ClipVisionConfig
    feature_layer: int
    attention_backend: str | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        c = self.config
        dtype, param_dtype = DTYPES[self.dtype], DTYPES[self.param_dtype]
        if pixel_values.shape[1:] != (c.num_channels, c.image_size, c.image_size):
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; the CLIP tower needs "
                f"[images, {c.num_channels}, {c.image_size}, {c.image_size}]")
        patches = patchify(pixel_values.astype(dtype), c.patch_size)
        x = dense(c.hidden_size, ("patch", "vision_embed"), name="patch_embedding", use_bias=False,
                  dtype=dtype, param_dtype=param_dtype)(patches)
        cls = self.param("class_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(stddev=0.02), ("vision_embed",)), (c.hidden_size,), param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, c.hidden_size)), x], axis=1)
        positions = nn.Embed(c.num_patches + 1, c.hidden_size, dtype=dtype, param_dtype=param_dtype,
                             embedding_init=nn.with_logical_partitioning(
                                 nn.initializers.normal(stddev=0.02), (None, "vision_embed")),
                             name="position_embedding")
        x = x + positions(jnp.arange(c.num_patches + 1))[None]
        x = layer_norm(c.layer_norm_eps, dtype, param_dtype, "pre_layrnorm")(x)
        layer_cls = layer_stack(ClipLayer, remat=self.remat_policy, scan=False, length=c.num_layers, in_axes=())
        initializing = self.is_initializing()
        feature = x if self.feature_layer == 0 else None
        for i in range(c.num_layers):
            if i >= self.feature_layer and not initializing:
                break
            x = layer_cls(c, self.attention_backend, dtype, param_dtype, name=f"layers_{i}")(x)
            if i + 1 == self.feature_layer:
                feature = x
        if initializing:
            layer_norm(c.layer_norm_eps, dtype, param_dtype, "post_layernorm")(x[:, 0])
        return feature
