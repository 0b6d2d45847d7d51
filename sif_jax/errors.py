"""The error type for bad input, shared by the libraries and the command lines.

`InputError` is what a library raises when what it was given cannot work (a missing checkpoint
directory, an unreadable image, a tokenizer that does not fit the model, a flag value out of
range); its message names the field or file and the value. It is a `ValueError`, so callers that
already catch ValueError for bad input keep doing so. The command lines (`sif_jax.cli.run_cli`)
print any exception as one `error: <one_line(exc)>` line.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user; the message names the field / file and the value."""


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line messages are joined with '; '); exceptions
    other than input errors (InputError, ValueError, FileNotFoundError, KeyError, OSError) are
    prefixed with their type name ('RuntimeError: ...')."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError) adds quotes
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    text = "; ".join(parts) if parts else type(exc).__name__
    if not isinstance(exc, ValueError | FileNotFoundError | KeyError | OSError):
        text = f"{type(exc).__name__}: {text}"
    return text
