"""Region-attention supervision for SFT: a loss on where the trace tokens look.

    loss = NLL + λ · mean_rows −log(ε + mean_{layers, heads} Σ_{k ∈ region} p(k | row))

p(k | row) is the decoder's attention probability from a trace row (a position whose next token is
a label) to key k, for the `layers` asked (`sft.region_attention_layers`), heads averaged; the region
is the example's target cells (`Batch.region_mask`, the image tokens whose cells overlap a target
box: the region of SAYO's region-attention reward and of TAS, METHODS §3). Rows of examples whose
region is empty are left out. ε = 1e-4.

Why: a model trained from scratch on the built-in task, with a vision tower that encodes the
objects' colour, still does not learn to read the image from the next-token loss alone: its
attention over the image stays near uniform and the object under a location is never
retrieved (benchmarks/RESULTS.md, "Grounding captions"). SAYO rewards this attention mass in RL
(Table 2, attention-only reward); here it is a supervised term during the SFT warm-up, so the
queries get a direct gradient towards the target.

The probabilities are recomputed from the layers' recorded queries and keys (Flax
`capture_intermediates` on `q_proj` / `k_proj`, or `q_norm` / `k_norm` where the family normalises
them; the rotary tables of `family.text_rope`; GQA; causal and padding masks; float32 softmax), the
same way `sif_jax.attention_map` does, so the attention backend of the forward pass does not matter
(the kernels' masses carry no gradient). Cost: [B, heads, L, L] float32 per supervised layer.
Unrolled decoder layers only (scan_layers=False).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from sif_jax.model.layers import apply_rotary

EPS = 1e-4
_QK_NAMES = ("q_proj", "k_proj", "q_norm", "k_norm")


def layer_indices(layers: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """`layers` with negative indices counted from the end (-1 = the last decoder layer); ValueError
    for an empty list or an index outside the model's `num_layers`."""
    if not layers:
        raise ValueError("config.sft.region_attention_layers=(): name at least one decoder layer")
    out = []
    for i in layers:
        if not -num_layers <= int(i) < num_layers:
            raise ValueError(f"config.sft.region_attention_layers={tuple(layers)!r}: layer {i} is outside the "
                             f"model's {num_layers} decoder layers")
        out.append(int(i) % num_layers)
    return tuple(sorted(set(out)))


def capture_filter(layers: Sequence[int]) -> Any:
    """The `capture_intermediates` predicate recording the queries and keys of decoder `layers`."""
    wanted = {f"layers_{i}" for i in layers}

    def record(module: Any, method: str) -> bool:
        return (method == "__call__" and module.name in _QK_NAMES and len(module.path) >= 2
                and module.path[0] == "text" and module.path[-2] in wanted)

    return record


def _captured(tree: Any, layer: int, name: str) -> jax.Array | None:
    node = tree.get("text", {}).get(f"layers_{layer}", {}).get(name)
    return None if node is None else node["__call__"][0]


def layer_qk(intermediates: Any, layer: int) -> tuple[jax.Array | None, jax.Array | None]:
    """Decoder `layer`'s recorded queries [B, L, H, D] and keys [B, L, KV, D] before the rotary embedding
    (`q_norm` / `k_norm` where the family normalises them, else `q_proj` / `k_proj`); None where not
    recorded (`capture_filter`)."""
    q = _captured(intermediates, layer, "q_norm")
    q = _captured(intermediates, layer, "q_proj") if q is None else q
    k = _captured(intermediates, layer, "k_norm")
    k = _captured(intermediates, layer, "k_proj") if k is None else k
    return q, k


def rotated_qk(q: jax.Array, k: jax.Array, cos: jax.Array, sin: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Recorded queries [B, L, H, D] and keys [B, L, KV, D] with the rotary embedding applied (cos, sin
    [B, L, D], `family.text_rope`), in float32, the keys repeated to H heads (GQA: head h reads kv head
    h // (H / KV))."""
    q = apply_rotary(q.astype(jnp.float32), cos, sin)
    k = apply_rotary(k.astype(jnp.float32), cos, sin)
    return q, jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)


def region_mass(intermediates: Any, layers: Sequence[int], cos: jax.Array, sin: jax.Array,
                attention_mask: jax.Array, region_mask: jax.Array) -> jax.Array:
    """float32 [B, L]: every query row's attention mass on the region keys, averaged over `layers` and
    heads (differentiable in the recorded queries and keys).

    intermediates: the `capture_intermediates` tree of a forward pass recorded with
    `capture_filter(layers)`; cos, sin: float32 [B, L, head_dim] (`family.text_rope`);
    attention_mask: [B, L] (0 = padding); region_mask: bool [B, L].
    Raises ValueError when a layer's queries or keys were not recorded (scanned layers)."""
    valid = attention_mask.astype(bool)
    length = valid.shape[1]
    causal = jnp.arange(length)[None, :] <= jnp.arange(length)[:, None]  # [Lq, Lk]
    allowed = causal[None] & valid[:, None, :]  # [B, Lq, Lk]
    masses = []
    for i in layers:
        q, k = layer_qk(intermediates, i)
        if q is None or k is None:
            raise ValueError(f"sft.region_attention_weight: decoder layer {i}'s queries / keys were not recorded; "
                             "region-attention supervision needs unrolled layers (scan_layers=False)")
        q, k = rotated_qk(q, k, cos, sin)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
        # finite fill, so a fully masked (padding) row is uniform, not NaN, before it is zeroed
        probs = jax.nn.softmax(jnp.where(allowed[:, None], logits, -1e30), axis=-1)
        probs = jnp.where(allowed[:, None], probs, 0.0)
        masses.append(jnp.sum(jnp.where(region_mask[:, None, None, :], probs, 0.0), axis=-1).mean(axis=1))
    return jnp.mean(jnp.stack(masses), axis=0)


def region_loss_terms(mass: jax.Array, label_mask: jax.Array, region_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(Σ −log(ε + mass), rows) over the rows that predict a label (label_mask[:, 1:], bool or weights
    [B, L]) of examples with a non-empty region; mass: `region_mass` [B, L]."""
    rows = (jnp.asarray(label_mask)[:, 1:] > 0) & jnp.any(region_mask, axis=1)[:, None]
    return -jnp.sum(jnp.where(rows, jnp.log(EPS + mass[:, :-1]), 0.0)), jnp.sum(rows)
