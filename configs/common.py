"""Helpers shared by the config files: the `get_config(arg)` argument parser."""

from __future__ import annotations

from typing import Any

import ml_collections

_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """The options of a `get_config(arg)` argument, e.g. "phase=sft,runlocal", over `defaults`.

    `arg` is comma-separated `key=value` items; a bare `key` means `key=True`. Each value is
    converted to the type of its default (bool: 1/true/yes or 0/false/no; int; float; str).
    Raises ValueError naming the item for an unknown key or a value of the wrong type.
    """
    out = ml_collections.ConfigDict(dict(defaults))
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, sep, text = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"config argument {item!r}: unknown option {key!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if isinstance(default, bool):
            value = text.strip().lower() if sep else "true"
            if value not in _TRUE + _FALSE:
                raise ValueError(f"config argument {item!r}: expected {key}=true or {key}=false")
            out[key] = value in _TRUE
        elif not sep:
            raise ValueError(f"config argument {item!r}: expected {key}=<{type(default).__name__}>")
        else:
            try:
                out[key] = type(default)(text.strip())
            except ValueError:
                raise ValueError(f"config argument {item!r}: {key} must be a {type(default).__name__}") from None
    return out
