"""Decoding helpers shared by the families' cache tests."""

import jax.numpy as jnp
import numpy as np


def decode_both_forms(params, first_logits, cache, steps, step_fn):
    """Greedy steps from one prefilled cache, stacked and per-layer: (logits, final cache) of each."""
    runs = []
    for form in (cache, cache.per_layer()):
        last, out = first_logits, []
        for _ in range(steps):
            last, form, _ = step_fn(params, jnp.argmax(last, axis=-1), form)
            out.append(last)
        runs.append((np.stack(out, 1), form))
    return runs

