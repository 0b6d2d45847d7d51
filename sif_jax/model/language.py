"""The Qwen2 / LLaMA decoder: GQA, SwiGLU, RMSNorm, M-RoPE (Qwen2) or 1-D RoPE (LLaMA).

The text config decides the variant: q/k/v projections carry a bias unless it sets
`attention_bias=False` (LLaMA), and the rotary follows the positions' leading axis
(`rope_cos_sin`: [3, B, L] M-RoPE, [1, B, L] 1-D RoPE).

Every layer calls `sif_jax.kernels.region_attention.attention`; the layers listed in
`mass_layers` also return how much attention each query paid to the region / visual keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from sif_jax.kernels.region_attention import attention
from sif_jax.model.config import TextConfig
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


def mrope_cos_sin(positions: jax.Array, config: TextConfig) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, L, head_dim] float32 for M-RoPE positions int [3, B, L].

    The head_dim/2 frequencies are split by `mrope_section` (t, h, w): frequency j rotates by
    the temporal, height or width position according to the section it falls in.
    """
    inv = inverse_frequencies(config.head_dim, config.rope_theta)
    freqs = positions.astype(jnp.float32)[..., None] * inv  # [3, B, L, D/2]
    axis_of_freq = jnp.concatenate(
        [jnp.full((n,), i, jnp.int32) for i, n in enumerate(config.mrope_section)]
    )
    chosen = jnp.take_along_axis(freqs, axis_of_freq[None, None, None, :], axis=0)[0]
    # take_along_axis over axis 0 with a broadcast index picks freqs[axis_of_freq[j], ..., j].
    emb = jnp.concatenate([chosen, chosen], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rope_cos_sin(positions: jax.Array, config) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, L, head_dim] float32 for positions int [3, B, L] (M-RoPE, `mrope_cos_sin`) or
    [1, B, L] (1-D RoPE as HF's LlamaRotaryEmbedding: angle p * theta^(-2i/d), halves repeated).

    Raises ValueError for another leading axis."""
    if positions.shape[0] == 3:
        return mrope_cos_sin(positions, config)
    if positions.shape[0] != 1:
        raise ValueError(f"positions must be [3, B, L] (M-RoPE) or [1, B, L] (1-D RoPE); got {positions.shape}")
    freqs = positions[0].astype(jnp.float32)[..., None] * inverse_frequencies(config.head_dim, config.rope_theta)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


class DecoderLayer(nn.Module):
    """One decoder layer. `want_mass` / `want_kv` ask for this layer's masses / keys and values;
    `scanned` returns `(x, (kv, masses))` as `nn.scan` needs instead of `(x, kv, masses)`;
    `prefix` reads `cache_kv` as a shared prefix's keys/values (see `__call__`)."""

    config: TextConfig
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
        cache_kv: tuple[jax.Array, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
    ) -> tuple:
        """One decoder layer (all arguments positional, so that nn.remat / nn.scan can wrap it).

        Args:
          x: [B, L, hidden]. cos, sin: [B, L, head_dim].
          kv_valid: bool [B, Lk] keys that may be seen (Lk = L, or the cache length S).
          visual_mask, region_mask: bool [B, Lk] or None; visual_scale: [B, L] or None.
          cache_kv: (keys, values) [B, S, kv_heads, head_dim] for a decode step; the new
            key/value is written at `cache_index` and attention runs over the whole cache.
            With `prefix` they are a prefix's keys/values [B, P, kv_heads, head_dim] instead: the
            L queries attend causally to [prefix, own keys] (Lk = P + L, bottom-right aligned, so
            query i sees the prefix and own keys 0..i), and kv_valid / visual_mask /
            region_mask cover those P + L keys.

        Returns:
          (x [B, L, hidden], kv, masses): kv = (keys, values) this layer produced or the updated
          cache when `want_kv` or decoding, else None; masses = (region_mass, visual_mass)
          [B, heads, L] when `want_mass`, else None.
        """
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        want_mass = self.want_mass
        bias = getattr(c, "attention_bias", True)
        h = RMSNorm(c.rms_norm_eps, self.param_dtype, name="input_norm")(x)
        q = dense((c.num_heads, c.head_dim), ("embed", "heads", "head_dim"), name="q_proj",
                  use_bias=bias, **kw)(h)
        k = dense((c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), name="k_proj",
                  use_bias=bias, **kw)(h)
        v = dense((c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), name="v_proj",
                  use_bias=bias, **kw)(h)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache_kv is None:
            keys, values, causal = k, v, True
        elif self.prefix:
            keys = jnp.concatenate([cache_kv[0].astype(k.dtype), k], axis=1)
            values = jnp.concatenate([cache_kv[1].astype(v.dtype), v], axis=1)
            causal = True
        else:
            # Decode: write this step's key/value into its slot, attend over every valid slot.
            keys = jax.lax.dynamic_update_slice_in_dim(cache_kv[0], k.astype(cache_kv[0].dtype),
                                                       cache_index, axis=1)
            values = jax.lax.dynamic_update_slice_in_dim(cache_kv[1], v.astype(cache_kv[1].dtype),
                                                         cache_index, axis=1)
            causal = False
        result = attention(
            q, keys.astype(q.dtype), values.astype(q.dtype), causal=causal, kv_valid=kv_valid,
            visual_mask=visual_mask if (want_mass or visual_scale is not None) else None,
            visual_scale=visual_scale,
            region_mask=region_mask if want_mass else None,
            backend=self.attention_backend,
        )
        out = checkpoint_name(result.out, ATTENTION_OUT)
        x = x + dense(c.hidden_size, ("heads", "head_dim", "embed"), axis=(-2, -1), name="o_proj",
                      use_bias=False, **kw)(out)
        h = checkpoint_name(RMSNorm(c.rms_norm_eps, self.param_dtype, name="post_attn_norm")(x), MLP_IN)
        x = x + GatedMLP(c.intermediate_size, c.hidden_act, False, ("embed", "mlp"), name="mlp",
                         **kw)(h)
        masses = (result.region_mass, result.visual_mass) if want_mass else None
        kv = (keys, values) if (self.want_kv or (cache_kv is not None and not self.prefix)) else None
        if self.scanned:
            return x, (kv, masses)
        return x, kv, masses


class Decoder(nn.Module):
    """Token embedding, `num_layers` decoder layers, final norm and the LM head.

    With `scan_layers` the layers run under `nn.scan` (params `layers/...` with a leading
    [num_layers] axis), else one by one (params `layers_{i}/...`); `remat_policy` wraps each
    layer in `nn.remat` (see `ModelConfig`).
    """

    config: TextConfig
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
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(stddev=0.02), ("vocab", "embed")
            ),
        )
        self.final_norm = RMSNorm(c.rms_norm_eps, param_dtype)
        if not c.tie_word_embeddings:
            self.lm_head = dense(c.vocab_size, ("embed", "vocab"), name="lm_head", use_bias=False,
                                 dtype=dtype, param_dtype=param_dtype)

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
        mass_layers: Sequence[int] = (),
        cache_kv: tuple[jax.Array, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
        return_kv: bool = False,
        return_hidden: bool = False,
        prefix_kv: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array | None, dict]:
        """embeddings [B, L, hidden], positions int [3 or 1, B, L] -> (logits [B, L, vocab] f32, aux).

        `prefix_kv` = (keys, values) [layers, B, P, kv_heads, head_dim] of a prefix these L tokens
        continue (e.g. a prompt's aux["kv"], one copy per row): every layer's queries attend to the
        prefix's keys and their own, causally (`DecoderLayer`); kv_valid, visual_mask and
        region_mask are then [B, P + L]. Not together with `cache_kv`.

        With `return_hidden` the LM head is skipped: logits is None and aux["hidden"] holds the
        final-normed hidden states [B, L, hidden] (callers chunk the vocabulary themselves).

        aux["attention_mass"][layer] = {"region": [B, H, L], "visual": [B, H, L]} for
        `mass_layers`; aux["kv"] = (keys, values) stacked [layers, B, Lk, kv_heads, head_dim]
        when `return_kv` or decoding with `cache_kv` (stacked the same way).

        Raises ValueError for a mass layer outside [0, num_layers).
        """
        c = self.config
        for i in mass_layers:
            if not 0 <= i < c.num_layers:
                raise ValueError(f"return_attention_mass: layer {i} not in [0, {c.num_layers})")
        if prefix_kv is not None:
            if cache_kv is not None:
                raise ValueError("prefix_kv and cache_kv are exclusive")
            cache_kv = prefix_kv
        cos, sin = rope_cos_sin(positions, c)
        want_kv = return_kv or (cache_kv is not None and prefix_kv is None)
        layer_args = (cos, sin, kv_valid, visual_mask, visual_scale, region_mask)
        kw = dict(config=c, attention_backend=self.attention_backend, dtype=DTYPES[self.dtype],
                  param_dtype=DTYPES[self.param_dtype], want_kv=want_kv, prefix=prefix_kv is not None)
        if self.scan_layers:
            # One body for every layer: masses are computed in each step when any layer asks
            # for them and the requested ones are picked from the stacked [layers, ...] output.
            stack = layer_stack(DecoderLayer, remat=self.remat_policy, scan=True, length=c.num_layers,
                                in_axes=(nn.broadcast,) * len(layer_args) + (0, nn.broadcast))
            x, (kv, stacked_mass) = stack(want_mass=bool(mass_layers), scanned=True, name="layers", **kw)(
                embeddings, *layer_args, cache_kv, cache_index)
            masses = {i: {name: None if m is None else m[i]
                          for name, m in zip(("region", "visual"), stacked_mass, strict=True)}
                      for i in sorted(set(mass_layers))}
        else:
            layer_cls = layer_stack(DecoderLayer, remat=self.remat_policy, scan=False, length=c.num_layers,
                                    in_axes=())
            x, masses, keys, values = embeddings, {}, [], []
            for i in range(c.num_layers):
                x, layer_kv, mass = layer_cls(want_mass=i in mass_layers, name=f"layers_{i}", **kw)(
                    x, *layer_args,
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
