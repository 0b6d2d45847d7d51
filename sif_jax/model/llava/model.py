"""LLaVA-1.5 in Flax Linen: CLIP features -> two-layer GELU projector -> the LLaMA decoder.

Same contract as `sif_jax.model.vlm.Qwen25VL` (region mask, visual scale, attention masses,
KV-cache decode, hidden states for the chunked LM head); positions are 1-D, int [1, B, L].
The k-th image position of the batch (row-major, as HF's `masked_scatter`) receives the k-th
projected feature of the images stacked [images * image_seq_length, hidden].
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sif_jax.model.language import Decoder
from sif_jax.model.layers import ACTIVATIONS, DTYPES, dense
from sif_jax.model.llava.config import LlavaConfig
from sif_jax.model.llava.vision import ClipVisionTower


class Projector(nn.Module):
    """linear_2(act(linear_1(x))): CLIP width -> text width (HF `LlavaMultiModalProjector`)."""

    config: LlavaConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        kw = dict(use_bias=c.multimodal_projector_bias, dtype=DTYPES[c.dtype], param_dtype=DTYPES[c.param_dtype])
        x = dense(c.text.hidden_size, ("vision_embed", "mlp"), name="linear_1", **kw)(x)
        x = ACTIVATIONS[c.projector_hidden_act](x)
        return dense(c.text.hidden_size, ("mlp", "embed"), name="linear_2", **kw)(x)


class Llava(nn.Module):
    """LLaVA-1.5. Call as `Llava(config).apply({'params': p}, **inputs)`; params `vision_tower`,
    `projector`, `text` (the decoder, whose layers stack under `scan_layers` as Qwen's do)."""

    config: LlavaConfig

    def setup(self) -> None:
        c = self.config
        self.vision_tower = ClipVisionTower(c.vision, c.feature_layer_index, c.attention_backend, c.dtype,
                                            c.param_dtype, c.remat_policy)
        self.projector = Projector(c)
        self.text = Decoder(c.text, c.attention_backend, c.dtype, c.param_dtype, c.scan_layers, c.remat_policy)

    def image_features(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values [N, C, S, S] -> projected features [N * image_seq_length, text hidden]."""
        features = self.vision_tower(pixel_values)
        if self.config.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        features = self.projector(features)
        return features.reshape(-1, features.shape[-1])

    def embed(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array | None = None,
        image_token_index: jax.Array | None = None,
        image_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Token embeddings [B, L, hidden] with the image positions replaced by image features.

        Image positions are `image_mask` (bool [B, L]) when given, else the `<image>` tokens.
        `image_token_index` (int [B, L]) says which feature row each image position takes;
        without it the k-th image position of the batch (row-major) takes row k.
        """
        embeddings = self.text.embed(input_ids)
        if pixel_values is None:
            return embeddings
        features = self.image_features(pixel_values)
        is_image = self.image_positions(input_ids, image_mask)
        if image_token_index is None:
            index = jnp.cumsum(is_image.reshape(-1)).reshape(is_image.shape) - 1
        else:
            index = image_token_index
        index = jnp.clip(index, 0, features.shape[0] - 1)
        return jnp.where(is_image[..., None], features.astype(embeddings.dtype)[index], embeddings)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        positions: jax.Array,
        pixel_values: jax.Array | None = None,
        image_token_index: jax.Array | None = None,
        image_mask: jax.Array | None = None,
        *,
        region_mask: jax.Array | None = None,
        visual_scale: jax.Array | None = None,
        return_attention_mass: Sequence[int] = (),
        return_kv: bool = False,
        return_hidden: bool = False,
    ) -> tuple[jax.Array | None, dict]:
        """Full forward over a (padded) batch.

        Args:
          input_ids: int [B, L]; attention_mask: {0,1} [B, L]; positions: int [1, B, L].
          pixel_values: float [images, 3, S, S] (CLIP-normalised) or None for text only.
          image_token_index, image_mask: see `embed`.
          region_mask, visual_scale, return_attention_mass, return_kv, return_hidden: as
            `Qwen25VL.__call__` (masses [B, heads, L] of the listed decoder layers).

        Returns:
          logits float32 [B, L, vocab] (None with return_hidden) and the aux dict of `Decoder`.
        """
        embeddings = self.embed(input_ids, pixel_values, image_token_index, image_mask)
        return self.text(
            embeddings, positions,
            kv_valid=attention_mask.astype(bool),
            visual_mask=self.image_positions(input_ids, image_mask),
            visual_scale=visual_scale,
            region_mask=region_mask,
            mass_layers=tuple(return_attention_mass),
            return_kv=return_kv,
            return_hidden=return_hidden,
        )

    def image_positions(self, input_ids: jax.Array, image_mask: jax.Array | None) -> jax.Array:
        """bool [B, L]: `image_mask`, or where it is None the `<image>` tokens of `input_ids`."""
        if image_mask is None:
            return input_ids == self.config.image_token_id
        return image_mask.astype(bool)

    def extend(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        prefix_kv: tuple[jax.Array, jax.Array],
        kv_valid: jax.Array,
        visual_mask: jax.Array,
        *,
        region_mask: jax.Array | None = None,
        return_attention_mass: Sequence[int] = (),
        return_hidden: bool = False,
    ) -> tuple[jax.Array | None, dict]:
        """Text tokens continuing a prefix that was run before (e.g. completions after a shared prompt).

        Args:
          input_ids: int [B, L] (embedded as text); positions: int [1, B, L].
          prefix_kv: (keys, values) [layers, B, P, kv_heads, head_dim], the prefix's aux["kv"].
          kv_valid, visual_mask, region_mask: bool [B, P + L] over the prefix's keys then these.
          return_attention_mass, return_hidden: as `__call__` (masses [B, heads, L] of these rows).

        Returns:
          As `__call__` over these L positions: query i attends to the prefix and to tokens 0..i,
          so the result equals the full forward's last L positions of [prefix, input_ids]
          (`Decoder`'s `prefix_kv`).
        """
        return self.text(
            self.text.embed(input_ids), positions,
            kv_valid=kv_valid, visual_mask=visual_mask, region_mask=region_mask,
            mass_layers=tuple(return_attention_mass), prefix_kv=prefix_kv, return_hidden=return_hidden,
        )

    def decode_step(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        cache_kv: tuple[jax.Array, jax.Array],
        cache_index: jax.Array,
        kv_valid: jax.Array,
        visual_mask: jax.Array,
        *,
        region_mask: jax.Array | None = None,
        visual_scale: jax.Array | None = None,
        return_attention_mass: Sequence[int] = (),
    ) -> tuple[jax.Array, dict]:
        """One token per row against a KV cache (see cache.py). input_ids int [B, 1], positions [1, B, 1]."""
        return self.text(
            self.text.embed(input_ids), positions,
            kv_valid=kv_valid, visual_mask=visual_mask, visual_scale=visual_scale,
            region_mask=region_mask, mass_layers=tuple(return_attention_mass),
            cache_kv=cache_kv, cache_index=cache_index,
        )
