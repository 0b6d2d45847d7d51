"""Flash attention that also reports how much attention went to a region of keys.

`attention(...)` is the one entry point every attention layer of sif_jax calls.
"""

from sif_jax.kernels.region_attention.ops import BACKENDS, AttentionOutput, attention

__all__ = ["BACKENDS", "AttentionOutput", "attention"]
