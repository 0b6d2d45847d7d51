"""The Qwen3-VL vision tower: patch embedding + interpolated learned positions, 2-D rotary ViT
blocks (LayerNorm, GELU-tanh MLP), the 2x2 patch merger and the DeepStack mergers.

As transformers' `Qwen3VLVisionModel`: every block attends within an image frame; the hidden
states after each block in `deepstack_visual_indexes` go through their own merger (LayerNorm over
the merged 4 * hidden width) and are returned beside the final merger's output.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from sif_jax.kernels.region_attention import attention
from sif_jax.model.layers import ACTIVATIONS, ATTENTION_OUT, DTYPES, MLP_IN, apply_rotary, dense, layer_stack
from sif_jax.model.qwen3_vl.config import Qwen3VLVisionConfig
from sif_jax.model.vision import vision_rotary


def layer_norm(eps: float, param_dtype: jnp.dtype, name: str) -> nn.LayerNorm:
    """torch.nn.LayerNorm(eps) with learned scale and bias (two-pass variance, as torch)."""
    return nn.LayerNorm(
        epsilon=eps, use_fast_variance=False, param_dtype=param_dtype, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
    )


class Qwen3VLVisionBlock(nn.Module):
    """One ViT block; `scanned` returns `(x, x)` as `nn.scan` needs (the per-block output)."""

    config: Qwen3VLVisionConfig
    attention_backend: str | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scanned: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segments: jax.Array):
        """x [I, N, hidden] -> same; patches of row i attend to patches with equal segment id."""
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = layer_norm(c.layer_norm_eps, self.param_dtype, "norm1")(x)
        qkv = dense((3, c.num_heads, c.head_dim), ("vision_embed", "qkv", "vision_heads", "head_dim"),
                    name="qkv", use_bias=True, **kw)(h)
        q = apply_rotary(qkv[:, :, 0], cos, sin)
        k = apply_rotary(qkv[:, :, 1], cos, sin)
        out = attention(q, k, qkv[:, :, 2], causal=False, q_segment_ids=segments, kv_segment_ids=segments,
                        backend=self.attention_backend).out
        out = checkpoint_name(out, ATTENTION_OUT)
        x = x + dense(c.hidden_size, ("vision_heads", "head_dim", "vision_embed"), axis=(-2, -1), name="proj",
                      use_bias=True, **kw)(out)
        h = checkpoint_name(layer_norm(c.layer_norm_eps, self.param_dtype, "norm2")(x), MLP_IN)
        h = dense(c.intermediate_size, ("vision_embed", "vision_mlp"), name="linear_fc1", use_bias=True, **kw)(h)
        h = ACTIVATIONS[c.hidden_act](h)
        x = x + dense(c.hidden_size, ("vision_mlp", "vision_embed"), name="linear_fc2", use_bias=True, **kw)(h)
        return (x, x) if self.scanned else x


class Qwen3VLPatchMerger(nn.Module):
    """LayerNorm (over hidden, or over merge**2 * hidden with `postshuffle_norm`), then each
    merge**2 consecutive patches -> one LLM token through fc1, exact GELU, fc2."""

    config: Qwen3VLVisionConfig
    postshuffle_norm: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [N, hidden] -> [N / merge**2, out_hidden]."""
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=True)
        width = c.hidden_size * c.merge_unit
        norm = layer_norm(c.layer_norm_eps, self.param_dtype, "norm")
        h = norm(x.reshape(-1, width)) if self.postshuffle_norm else norm(x).reshape(-1, width)
        h = dense(width, ("vision_merged", "vision_merged_out"), name="linear_fc1", **kw)(h)
        h = jax.nn.gelu(h, approximate=False)
        return dense(c.out_hidden_size, ("vision_merged_out", "embed"), name="linear_fc2", **kw)(h)


class Qwen3VLVisionTower(nn.Module):
    config: Qwen3VLVisionConfig
    attention_backend: str | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"

    @nn.compact
    def __call__(
        self,
        pixel_values: jax.Array,
        patch_positions: jax.Array,
        frame_segments: jax.Array,
        pos_indices: jax.Array,
        pos_weights: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """Image features and DeepStack features, one row per LLM visual token.

        Two layouts (see `geometry.py` for the host arrays):
          flat (HF's): pixel_values [N, C*T*P*P]; patch_positions [N, 2]; frame_segments [N];
            pos_indices [N, 4] int; pos_weights [N, 4] float.
          batched: a leading [I] axis on each, one image per row padded to N patches.

        Returns:
          (features [M, out_hidden], deepstack [len(deepstack_visual_indexes), M, out_hidden]) in
          the compute dtype, M = (I *) N / merge**2.

        Raises:
          ValueError: pixel_values of the wrong rank / width, or a patch count not a multiple of merge**2.
        """
        c = self.config
        dtype, param_dtype = DTYPES[self.dtype], DTYPES[self.param_dtype]
        if pixel_values.ndim not in (2, 3) or pixel_values.shape[-1] != c.patch_dim:
            raise ValueError(f"pixel_values has shape {pixel_values.shape}; expected [num_patches, {c.patch_dim}] "
                             f"or [images, patches, {c.patch_dim}]")
        if pixel_values.shape[-2] % c.merge_unit:
            raise ValueError(f"pixel_values has {pixel_values.shape[-2]} patches per row, not a multiple of "
                             f"spatial_merge_size**2={c.merge_unit}")
        if pixel_values.ndim == 2:
            pixel_values, patch_positions, frame_segments, pos_indices, pos_weights = (
                a[None] for a in (pixel_values, patch_positions, frame_segments, pos_indices, pos_weights))
        # The Conv3d with stride = kernel is a Dense on the flattened (C, T, P, P) patch.
        x = dense(c.hidden_size, ("patch", "vision_embed"), name="patch_embed", use_bias=True, dtype=dtype,
                  param_dtype=param_dtype)(pixel_values.astype(dtype))
        # The learned [side * side, hidden] position table (axis names of the patch embedding: the
        # table rows are replicated, the width sharded as the vision hidden states).
        table = self.param("pos_embed", nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02),
                                                                     ("patch", "vision_embed")),
                           (c.num_position_embeddings, c.hidden_size), param_dtype)
        pos = jnp.sum(table[pos_indices].astype(jnp.float32) * pos_weights[..., None].astype(jnp.float32), axis=-2)
        x = x + pos.astype(x.dtype)
        cos, sin = vision_rotary(patch_positions, c)  # type: ignore[arg-type]
        kw = dict(config=c, attention_backend=self.attention_backend, dtype=dtype, param_dtype=param_dtype)
        if self.scan_layers:
            stack = layer_stack(Qwen3VLVisionBlock, remat=self.remat_policy, scan=True, length=c.depth,
                                in_axes=(nn.broadcast,) * 3)
            x, per_block = stack(scanned=True, name="blocks", **kw)(x, cos, sin, frame_segments)
            levels = [per_block[i] for i in c.deepstack_visual_indexes]
        else:
            block_cls = layer_stack(Qwen3VLVisionBlock, remat=self.remat_policy, scan=False, length=c.depth,
                                    in_axes=())
            levels = []
            for i in range(c.depth):
                x = block_cls(name=f"blocks_{i}", **kw)(x, cos, sin, frame_segments)
                if i in c.deepstack_visual_indexes:
                    levels.append(x)
        flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
        features = Qwen3VLPatchMerger(c, False, dtype, param_dtype, name="merger")(flat(x))
        deepstack = [
            Qwen3VLPatchMerger(c, True, dtype, param_dtype, name=f"deepstack_merger_{j}")(flat(h))
            for j, h in enumerate(levels)
        ]
        stacked = jnp.stack(deepstack) if deepstack else jnp.zeros((0, *features.shape), features.dtype)
        return features, stacked
