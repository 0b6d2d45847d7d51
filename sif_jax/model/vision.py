"""The Qwen2.5-VL vision tower: patch embedding, 2-D rotary ViT blocks, 2x2 patch merger.

Window and full attention are the same block with different segment ids (see geometry.py),
so patches stay in HF's order and no permutation is needed.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from sif_jax.kernels.region_attention import attention
from sif_jax.model.config import VisionConfig
from sif_jax.model.layers import (
    ATTENTION_OUT,
    DTYPES,
    MLP_IN,
    GatedMLP,
    RMSNorm,
    apply_rotary,
    dense,
    inverse_frequencies,
    layer_stack,
)


def vision_rotary(
    patch_positions: jax.Array, config: VisionConfig
) -> tuple[jax.Array, jax.Array]:
    """cos, sin [..., head_dim] float32 of the 2-D rotary for patch (row, col) positions [..., 2].

    The first half of the rotated dims encodes the row, the second the column, each with
    head_dim // 4 frequencies; the result is tiled twice to cover the rotate-half layout.
    """
    inv = inverse_frequencies(config.head_dim // 2, config.rope_theta)
    pos = patch_positions.astype(jnp.float32)
    freqs = jnp.concatenate([pos[..., :1] * inv, pos[..., 1:2] * inv], axis=-1)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


class VisionBlock(nn.Module):
    """One ViT block; `scanned` returns `(x, None)` as `nn.scan` needs instead of `x`."""

    config: VisionConfig
    attention_backend: str | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scanned: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        window_segments: jax.Array,
        frame_segments: jax.Array,
        full: bool | jax.Array,
    ) -> jax.Array | tuple[jax.Array, None]:
        """x [I, N, hidden] -> same; patches of image row i attend within equal segment ids.

        The segment ids are `frame_segments` [I, N] where `full` (a bool, or a bool [] array:
        data, so that scanned blocks share one body) and `window_segments` [I, N] elsewhere.
        """
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        segments = jnp.where(full, frame_segments, window_segments)
        h = RMSNorm(c.rms_norm_eps, self.param_dtype, name="norm1")(x)
        qkv = dense((3, c.num_heads, c.head_dim), ("vision_embed", "qkv", "vision_heads", "head_dim"),
                    name="qkv", use_bias=True, **kw)(h)
        q = apply_rotary(qkv[:, :, 0], cos, sin)
        k = apply_rotary(qkv[:, :, 1], cos, sin)
        out = attention(
            q, k, qkv[:, :, 2], causal=False, q_segment_ids=segments, kv_segment_ids=segments,
            backend=self.attention_backend,
        ).out
        out = checkpoint_name(out, ATTENTION_OUT)
        x = x + dense(c.hidden_size, ("vision_heads", "head_dim", "vision_embed"), axis=(-2, -1),
                      name="proj", use_bias=True, **kw)(out)
        h = checkpoint_name(RMSNorm(c.rms_norm_eps, self.param_dtype, name="norm2")(x), MLP_IN)
        x = x + GatedMLP(c.intermediate_size, c.hidden_act, True, ("vision_embed", "vision_mlp"),
                         name="mlp", **kw)(h)
        return (x, None) if self.scanned else x


class PatchMerger(nn.Module):
    """RMSNorm, then each `merge**2` consecutive patches -> one LLM token through a GELU MLP."""

    config: VisionConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [N, hidden] -> [N / merge**2, out_hidden]."""
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=True)
        width = c.hidden_size * c.merge_unit
        h = RMSNorm(c.rms_norm_eps, self.param_dtype, name="ln_q")(x).reshape(-1, width)
        h = dense(width, ("vision_merged", "vision_merged_out"), name="mlp_0", **kw)(h)
        h = jax.nn.gelu(h, approximate=False)
        return dense(c.out_hidden_size, ("vision_merged_out", "embed"), name="mlp_2", **kw)(h)


class VisionTower(nn.Module):
    config: VisionConfig
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
        window_segments: jax.Array,
        frame_segments: jax.Array,
    ) -> jax.Array:
        """Image features, one row per LLM visual token.

        Two layouts:
          flat (HF's): pixel_values [N, C*T*P*P], all images' patches concatenated;
            patch_positions [N, 2]; window_segments, frame_segments [N] (geometry.py).
          batched: pixel_values [I, N, C*T*P*P], one image per row padded to N patches, with
            geometry [I, N, 2] / [I, N]. Attention then costs I * N^2 instead of (I * N)^2.

        Returns:
          [num_patches / merge**2, out_hidden_size] in the compute dtype (batched: rows
          i * N / merge**2 ... belong to image i).
        """
        c = self.config
        dtype, param_dtype = DTYPES[self.dtype], DTYPES[self.param_dtype]
        if pixel_values.ndim not in (2, 3) or pixel_values.shape[-1] != c.patch_dim:
            raise ValueError(
                f"pixel_values has shape {pixel_values.shape}; expected [num_patches, {c.patch_dim}] "
                f"or [images, patches, {c.patch_dim}]"
            )
        if pixel_values.shape[-2] % c.merge_unit:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[-2]} patches per row, not a multiple of "
                f"spatial_merge_size**2={c.merge_unit}"
            )
        if pixel_values.ndim == 2:
            pixel_values, patch_positions = pixel_values[None], patch_positions[None]
            window_segments, frame_segments = window_segments[None], frame_segments[None]
        # The Conv3d with stride = kernel is a Dense on the flattened (C, T, P, P) patch.
        x = dense(c.hidden_size, ("patch", "vision_embed"), name="patch_embed", use_bias=False,
                  dtype=dtype, param_dtype=param_dtype)(pixel_values.astype(dtype))
        cos, sin = vision_rotary(patch_positions, c)
        full = [i in c.fullatt_block_indexes for i in range(c.depth)]
        kw = dict(config=c, attention_backend=self.attention_backend, dtype=dtype, param_dtype=param_dtype)
        if self.scan_layers:
            # One body for every block: whether a block attends over the full frame is a scanned
            # bool [depth] input choosing between the two segment-id arrays.
            stack = layer_stack(VisionBlock, remat=self.remat_policy, scan=True, length=c.depth,
                                in_axes=(nn.broadcast,) * 4 + (0,))
            x, _ = stack(scanned=True, name="blocks", **kw)(
                x, cos, sin, window_segments, frame_segments, jnp.asarray(full))
        else:
            block_cls = layer_stack(VisionBlock, remat=self.remat_policy, scan=False, length=c.depth,
                                    in_axes=())
            for i in range(c.depth):
                x = block_cls(name=f"blocks_{i}", **kw)(x, cos, sin, window_segments, frame_segments, full[i])
        return PatchMerger(c, dtype, param_dtype, name="merger")(x.reshape(-1, x.shape[-1]))
