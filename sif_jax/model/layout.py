"""Per-layer and stacked ("scan") parameter layouts of the decoder layers and vision blocks.

With `ModelConfig.scan_layers=False` every decoder layer / vision block has its own subtree,
`params["text"]["layers_{i}"]` and `params["visual"]["blocks_{i}"]`. With `scan_layers=True` the
model runs them under `nn.scan` and holds one subtree, `params["text"]["layers"]` and
`params["visual"]["blocks"]`, whose leaves carry a leading layer axis: `[num_layers, ...]`
(`[depth, ...]` for the vision blocks). Everything else is the same in both layouts.

`to_layout` converts either way; NumPy leaves stay NumPy (host memory), others become jax arrays.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sif_jax.model.config import ModelConfig

Params = Any

# (top-level module, per-layer prefix, stacked name, how many in the config)
_GROUPS = (
    ("text", "layers", lambda c: c.text.num_layers),
    ("visual", "blocks", lambda c: c.vision.depth),
)


def _xp(leaf: Any) -> Any:
    return np if isinstance(leaf, np.ndarray) else jnp


def is_stacked(params: Params) -> bool:
    """True if `params` hold the stacked layout (a `text/layers` subtree), False for per-layer.

    Raises ValueError when the tree holds neither (or both) layouts of the decoder layers.
    """
    text = params.get("text", {}) if hasattr(params, "get") else {}
    stacked = "layers" in text
    per_layer = any(re.fullmatch(r"layers_\d+", k) for k in text)
    if stacked == per_layer:
        raise ValueError(
            "params['text'] must hold either 'layers' (scan_layers=True) or 'layers_0'... "
            f"(scan_layers=False); found keys {sorted(text)[:6]}"
        )
    return stacked


def stack_layers(params: Params, config: ModelConfig) -> Params:
    """Per-layer layout -> stacked layout (a new tree; `params` is not modified).

    Raises ValueError naming the first missing `layers_{i}` / `blocks_{i}` subtree.
    """
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
    for top, prefix, count in _GROUPS:
        if top not in out:
            continue
        n = count(config)
        names = [f"{prefix}_{i}" for i in range(n)]
        missing = [name for name in names if name not in out[top]]
        if missing:
            raise ValueError(f"params['{top}'] has no {missing[0]!r} (config has {n} {prefix})")
        per_layer = [out[top].pop(name) for name in names]
        out[top][prefix] = jax.tree.map(lambda *xs: _xp(xs[0]).stack(xs), *per_layer)
    return out


def unstack_layers(params: Params, config: ModelConfig) -> Params:
    """Stacked layout -> per-layer layout (a new tree; `params` is not modified).

    Raises ValueError when a stacked leaf's leading axis is not the config's layer count.
    """
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
    for top, prefix, count in _GROUPS:
        if top not in out:
            continue
        n = count(config)
        if prefix not in out[top]:
            raise ValueError(f"params['{top}'] has no stacked {prefix!r} subtree")
        stacked = out[top].pop(prefix)
        for path, leaf in jax.tree_util.tree_flatten_with_path(stacked)[0]:
            if leaf.shape[:1] != (n,):
                name = "/".join(str(getattr(k, "key", k)) for k in path)
                raise ValueError(
                    f"params['{top}']['{prefix}']/{name} has shape {tuple(leaf.shape)}; expected a "
                    f"leading layer axis of {n}"
                )
        for i in range(n):
            out[top][f"{prefix}_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return out


def to_layout(params: Params, config: ModelConfig) -> Params:
    """`params` in the layout `config.scan_layers` asks for, converting only when needed."""
    stacked = is_stacked(params)
    if stacked == config.scan_layers:
        return params
    return stack_layers(params, config) if config.scan_layers else unstack_layers(params, config)
