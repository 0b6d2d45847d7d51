"""The Qwen3-VL text decoder: GQA with per-head QK RMSNorm, SwiGLU, interleaved M-RoPE, DeepStack.

As transformers' `Qwen3VLTextModel`: q and k are RMS-normalised over head_dim before the rotary;
after decoder layer i < number of DeepStack levels, level i's vision features are added to the
hidden states at the image positions. Every layer calls
`sif_jax.kernels.region_attention.attention`; the layers listed in `mass_layers` also return the
attention masses on the region / visual keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from sif_jax.kernels.region_attention import attention
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
    stack_like,
)
from sif_jax.model.qwen3_vl.config import Qwen3VLTextConfig


def interleaved_axis_of_frequency(config: Qwen3VLTextConfig) -> jax.Array:
    """int32 [head_dim / 2]: which M-RoPE axis (0 = t, 1 = h, 2 = w) rotates frequency j.

    transformers' `Qwen3VLTextRotaryEmbedding.recomposition_frequencies`: frequency j takes the
    height position when j % 3 == 1 and j < 3 * mrope_section[1], the width position when
    j % 3 == 2 and j < 3 * mrope_section[2], else the temporal position.
    """
    half = config.head_dim // 2
    j = jnp.arange(half)
    _, sec_h, sec_w = config.mrope_section
    axis = jnp.where((j % 3 == 1) & (j < 3 * sec_h), 1, 0)
    return jnp.where((j % 3 == 2) & (j < 3 * sec_w), 2, axis).astype(jnp.int32)


def interleaved_mrope_cos_sin(positions: jax.Array, config: Qwen3VLTextConfig) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, L, head_dim] float32 for M-RoPE positions int [3, B, L] (interleaved sections)."""
    inv = inverse_frequencies(config.head_dim, config.rope_theta)
    freqs = positions.astype(jnp.float32)[..., None] * inv  # [3, B, L, D/2]
    axis = interleaved_axis_of_frequency(config)
    chosen = jnp.take_along_axis(freqs, axis[None, None, None, :], axis=0)[0]
    emb = jnp.concatenate([chosen, chosen], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


class Qwen3VLDecoderLayer(nn.Module):
    """One decoder layer (+ its DeepStack addition). `scanned` returns `(x, (kv, masses))`;
    `prefix` reads `cache_kv` as a shared prefix's keys/values (as `sif_jax.model.language.DecoderLayer`)."""

    config: Qwen3VLTextConfig
    attention_backend: str | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    want_mass: bool = False
    want_kv: bool = False
    scanned: bool = False
    prefix: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        kv_valid: jax.Array,
        visual_mask: jax.Array | None,
        visual_scale: jax.Array | None,
        region_mask: jax.Array | None,
        deepstack: jax.Array | None = None,
        cache_kv: tuple[jax.Array, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
    ) -> tuple:
        """All arguments positional (nn.remat / nn.scan wrap it).

        Args:
          x: [B, L, hidden]. cos, sin: [B, L, head_dim].
          kv_valid: bool [B, Lk] keys that may be seen (Lk = L, or the cache length S).
          visual_mask, region_mask: bool [B, Lk] or None; visual_scale: [B, L] or None.
          deepstack: [B, L, hidden] added to the output (zeros off the image positions), or None.
          cache_kv: (keys, values) [B, S, kv_heads, head_dim] for a decode step; this step's
            key/value is written at `cache_index` and attention runs over the whole cache.
            With `prefix` they are a prefix's keys/values [B, P, kv_heads, head_dim] instead: the
            L queries attend causally to [prefix, own keys] (Lk = P + L, bottom-right aligned), and
            kv_valid / visual_mask / region_mask cover those P + L keys.

        Returns:
          (x, kv, masses) as `sif_jax.model.language.DecoderLayer`.
        """
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        bias = c.attention_bias
        h = RMSNorm(c.rms_norm_eps, self.param_dtype, name="input_norm")(x)
        q = dense((c.num_heads, c.head_dim), ("embed", "heads", "head_dim"), name="q_proj", use_bias=bias, **kw)(h)
        k = dense((c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), name="k_proj", use_bias=bias,
                  **kw)(h)
        v = dense((c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), name="v_proj", use_bias=bias,
                  **kw)(h)
        q = RMSNorm(c.rms_norm_eps, self.param_dtype, name="q_norm")(q)
        k = RMSNorm(c.rms_norm_eps, self.param_dtype, name="k_norm")(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache_kv is None:
            keys, values, causal = k, v, True
        elif self.prefix:
            keys = jnp.concatenate([cache_kv[0].astype(k.dtype), k], axis=1)
            values = jnp.concatenate([cache_kv[1].astype(v.dtype), v], axis=1)
            causal = True
        else:
            keys = jax.lax.dynamic_update_slice_in_dim(cache_kv[0], k.astype(cache_kv[0].dtype), cache_index, axis=1)
            values = jax.lax.dynamic_update_slice_in_dim(cache_kv[1], v.astype(cache_kv[1].dtype), cache_index,
                                                         axis=1)
            causal = False
        result = attention(
            q, keys.astype(q.dtype), values.astype(q.dtype), causal=causal, kv_valid=kv_valid,
            visual_mask=visual_mask if (self.want_mass or visual_scale is not None) else None,
            visual_scale=visual_scale,
            region_mask=region_mask if self.want_mass else None,
            backend=self.attention_backend,
        )
        out = checkpoint_name(result.out, ATTENTION_OUT)
        x = x + dense(c.hidden_size, ("heads", "head_dim", "embed"), axis=(-2, -1), name="o_proj", use_bias=bias,
                      **kw)(out)
        h = checkpoint_name(RMSNorm(c.rms_norm_eps, self.param_dtype, name="post_attn_norm")(x), MLP_IN)
        x = x + GatedMLP(c.intermediate_size, c.hidden_act, False, ("embed", "mlp"), name="mlp", **kw)(h)
        if deepstack is not None:
            x = x + deepstack.astype(x.dtype)
        masses = (result.region_mass, result.visual_mass) if self.want_mass else None
        kv = (keys, values) if (self.want_kv or (cache_kv is not None and not self.prefix)) else None
        if self.scanned:
            return x, (kv, masses)
        return x, kv, masses


class Qwen3VLDecoder(nn.Module):
    """Token embedding, the decoder layers, final norm and the LM head (tied or not).

    Parameter layouts as `sif_jax.model.language.Decoder` (`layers_{i}` or stacked `layers`).
    """

    config: Qwen3VLTextConfig
    attention_backend: str | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"

    def setup(self) -> None:
        c = self.config
        dtype, param_dtype = DTYPES[self.dtype], DTYPES[self.param_dtype]
        self.embed_tokens = nn.Embed(
            c.vocab_size, c.hidden_size, dtype=dtype, param_dtype=param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("vocab", "embed")),
        )
        self.final_norm = RMSNorm(c.rms_norm_eps, param_dtype)
        if not c.tie_word_embeddings:
            self.lm_head = dense(c.vocab_size, ("embed", "vocab"), name="lm_head", use_bias=False, dtype=dtype,
                                 param_dtype=param_dtype)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        return self.embed_tokens(input_ids)

    @nn.compact
    def __call__(
        self,
        embeddings: jax.Array,
        positions: jax.Array,
        *,
        kv_valid: jax.Array,
        visual_mask: jax.Array | None = None,
        visual_scale: jax.Array | None = None,
        region_mask: jax.Array | None = None,
        deepstack: jax.Array | None = None,
        mass_layers: Sequence[int] = (),
        cache_kv: tuple[jax.Array, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
        return_kv: bool = False,
        return_hidden: bool = False,
        prefix_kv: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array | None, dict]:
        """embeddings [B, L, hidden], positions int [3, B, L] -> (logits [B, L, vocab] f32, aux).

        `deepstack` [levels, B, L, hidden]: level i is added after layer i (zeros where no image).
        `prefix_kv` = (keys, values) [layers, B, P, kv_heads, head_dim] of a prefix these L tokens
        continue (a prompt's aux["kv"], one copy per row): every layer's queries attend causally to
        the prefix's keys and their own; kv_valid, visual_mask and region_mask are then [B, P + L].
        The prefix's DeepStack additions are already in its keys/values (they touch only its image
        positions), so the continuation takes no `deepstack`. Scanned and unrolled layers alike.
        Outputs, `return_hidden`, aux["attention_mass"] and aux["kv"] as
        `sif_jax.model.language.Decoder.__call__`. Raises ValueError for a mass layer outside
        [0, num_layers), more DeepStack levels than layers, `prefix_kv` with `cache_kv`, or
        `prefix_kv` with `deepstack`.
        """
        c = self.config
        for i in mass_layers:
            if not 0 <= i < c.num_layers:
                raise ValueError(f"return_attention_mass: layer {i} not in [0, {c.num_layers})")
        levels = 0 if deepstack is None else deepstack.shape[0]
        if levels > c.num_layers:
            raise ValueError(f"deepstack has {levels} levels; the decoder has {c.num_layers} layers")
        if prefix_kv is not None:
            if cache_kv is not None:
                raise ValueError("prefix_kv and cache_kv are exclusive")
            if levels:
                raise ValueError("prefix_kv: the continuation takes no deepstack (image positions are the prefix's)")
            cache_kv = prefix_kv
        cos, sin = interleaved_mrope_cos_sin(positions, c)
        want_kv = return_kv or (cache_kv is not None and prefix_kv is None)
        layer_args = (cos, sin, kv_valid, visual_mask, visual_scale, region_mask)
        kw = dict(config=c, attention_backend=self.attention_backend, dtype=DTYPES[self.dtype],
                  param_dtype=DTYPES[self.param_dtype], want_kv=want_kv, prefix=prefix_kv is not None)
        if self.scan_layers:
            # One body: every layer adds its DeepStack slice, zeros beyond the last level.
            per_layer = None
            if levels:
                per_layer = jnp.concatenate(
                    [deepstack, jnp.zeros((c.num_layers - levels, *deepstack.shape[1:]), deepstack.dtype)])
            stack = layer_stack(Qwen3VLDecoderLayer, remat=self.remat_policy, scan=True, length=c.num_layers,
                                in_axes=(nn.broadcast,) * len(layer_args) + (0, 0, nn.broadcast))
            x, (kv, stacked_mass) = stack(want_mass=bool(mass_layers), scanned=True, name="layers", **kw)(
                embeddings, *layer_args, per_layer, cache_kv, cache_index)
            masses = {i: {name: None if m is None else m[i]
                          for name, m in zip(("region", "visual"), stacked_mass, strict=True)}
                      for i in sorted(set(mass_layers))}
        else:
            layer_cls = layer_stack(Qwen3VLDecoderLayer, remat=self.remat_policy, scan=False, length=c.num_layers,
                                    in_axes=())
            x, masses, keys, values = embeddings, {}, [], []
            for i in range(c.num_layers):
                x, layer_kv, mass = layer_cls(want_mass=i in mass_layers, name=f"layers_{i}", **kw)(
                    x, *layer_args, deepstack[i] if i < levels else None,
                    None if cache_kv is None else (cache_kv[0][i], cache_kv[1][i]), cache_index,
                )
                if mass is not None:
                    masses[i] = {"region": mass[0], "visual": mass[1]}
                if layer_kv is not None:
                    keys.append(layer_kv[0])
                    values.append(layer_kv[1])
            kv = stack_like(cache_kv, keys, values)
        x = self.final_norm(x)
        aux: dict = {"attention_mass": masses}
        if kv is not None:
            aux["kv"] = kv
        if return_hidden:
            aux["hidden"] = x
            return None, aux
        logits = self.embed_tokens.attend(x) if c.tie_word_embeddings else self.lm_head(x)
        return logits.astype(jnp.float32), aux
