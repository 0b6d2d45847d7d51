"""The convention every command line shares (`python -m sif_jax.<train|evaluate|generate|export|plan>`).

* Bad input — a missing checkpoint, an unreadable image, a prompt too long, a wrong model size, a
  bad flag or config value — is one line `error: <message>` on stderr and a non-zero exit status,
  with no traceback unless `--verbose` (train also takes absl's `-v 1`):
    2  usage: an unknown or malformed flag (`ArgumentParser`, `parse_config_flags`), a missing
       required flag, or a config that fails validation (train, plan: `run_cli(..., usage_errors=...)`);
    1  anything that goes wrong while running (evaluate / generate / export: bad input found
       while running; plan: a program that does not compile or fit);
    130 interrupted (Ctrl-C). A preempted training run exits 143 (`train`).
* `run_cli` applies it to a command's work; `fail` prints one error line and exits.
* The libraries raise `errors.InputError` (a ValueError) naming the field or file; the messages are
  flattened to one line by `errors.one_line`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from sif_jax.errors import one_line

USAGE_STATUS = 2
ERROR_STATUS = 1
INTERRUPTED_STATUS = 130

T = TypeVar("T")


def fail(message: str, status: int = ERROR_STATUS) -> NoReturn:
    """Prints `error: <message>` (one line) on stderr and exits with `status`."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (`error: ... (see --help)`, exit status 2)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)", USAGE_STATUS)


def quiet_logging(verbose: bool) -> None:
    """Orbax and absl log every restore at INFO; keep stderr for errors unless --verbose."""
    if verbose:
        return
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("absl", "orbax", "jax", "sif_jax"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_cli(main: Callable[[], T], verbose: bool, *,
            usage_errors: tuple[type[BaseException], ...] = ()) -> T:
    """Runs `main()` and returns its result; an exception becomes `error: <one line>` and exit
    status 2 when it is one of `usage_errors` (train and plan: a config that fails validation),
    else 1; with `verbose` it is re-raised with its traceback instead. SystemExit passes through;
    Ctrl-C is `error: interrupted`, exit 130."""
    try:
        return main()
    except KeyboardInterrupt:
        fail("interrupted", INTERRUPTED_STATUS)
    except SystemExit:
        raise
    except BaseException as e:
        if verbose:
            raise
        fail(one_line(e), USAGE_STATUS if isinstance(e, usage_errors) else ERROR_STATUS)


# ---------------------------------------------------------------------------- config flags


def config_fields(config_path: str) -> list[str]:
    """Every leaf field of an ml_collections config file, dotted ('grpo.group_size'); [] if it cannot
    be loaded."""
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location("sif_config_for_suggestions", config_path.split(":")[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        config = module.get_config()
    except Exception:  # a broken config file is reported by the flag parser itself
        return []
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for key in node.keys():
            value = node[key]
            if hasattr(value, "keys") and callable(value.keys):
                walk(value, f"{prefix}{key}.")
            else:
                out.append(f"{prefix}{key}")

    walk(config, "")
    return out


def config_flag_message(error: BaseException, argv: Sequence[str]) -> str:
    """One line for a failed `--config.*` parse: an unknown field names the closest existing one
    (difflib), other errors are flattened to one line."""
    import difflib
    import re

    from absl import flags

    text = str(error.args[0] if isinstance(error, KeyError | AttributeError) and error.args else error)
    match = re.search(r"flag '(config\.[^']+)'", text)
    name = match.group(1) if match else ""
    if not name and isinstance(error, KeyError | AttributeError):  # ml_collections: the missing key only
        found = re.search(r"[A-Za-z_][A-Za-z0-9_]*", text)
        key = found.group(0) if found else ""
        overrides = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--config.")]
        name = next((o for o in overrides if key and key in o.split(".")), key)
    if name:
        name = name.removeprefix("config.")
        path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
        close = difflib.get_close_matches(name, config_fields(path), n=1, cutoff=0.6) if path else []
        hint = f"; did you mean --config.{close[0]}?" if close else ""
        return f"--config.{name}: no such config field in {path or 'the config'}{hint}"
    if isinstance(error, flags.Error):
        return str(error).strip().replace("\n", "; ")
    return one_line(error)


def parse_config_flags(argv: list[str], program: str, verbose_flags: Sequence[str] = ("--verbose",)) -> list[str]:
    """absl flag parsing for a command taking `--config=<file> --config.a.b=value`: a bad flag or
    override is one `error:` line with a suggestion (exit status 2), unless a verbose flag is given."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except Exception as e:
        if any(a.split("=", 1)[0] in verbose_flags for a in argv):
            raise
        fail(f"{config_flag_message(e, argv)} (see python -m {program} --helpfull)", USAGE_STATUS)
