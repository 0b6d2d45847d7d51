"""What the command lines share (`sif_jax.evaluate`, `sif_jax.generate`, `sif_jax.export`).

* `load_model`: a checkpoint of any of the three kinds sif_jax writes or reads —
    run     a training run directory (`<workdir>/grpo/<step>` or `<workdir>/sft/<step>`, the newest
            params; or a phase directory itself), see `checkpoint.load_run_params`;
    hf      a Hugging Face directory (config.json + *.safetensors), see `convert.hf`;
    params  a params-only orbax export (`python -m sif_jax.export --format=orbax`): `params/` plus
            `sif_jax.json` (model config, dtype, tokenizer).
  The model config is read *before* the params, so asking for another model size
  (`--model=qwen2_5_vl_3b` against a tiny checkpoint) fails at once, naming both.
* `load_tokenizer`: `builtin`, a tokenizer.json path, or (empty) what the checkpoint says — the
  run's `tokenizer` meta field, `tokenizer.json` or `sif_jax.json` inside an export / HF directory.
* `run_cli`: bad input (missing checkpoint, unreadable image, prompt too long, wrong model size,
  bad flag value) is one line `error: ...` on stderr and exit status 1, with no traceback unless
  `--verbose`; `ArgumentParser` does the same for argparse's usage errors (status 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np

EXPORT_META = "sif_jax.json"  # written by sif_jax.export next to the params / safetensors
PARAMS_DIR = "params"


class CLIError(Exception):
    """Bad input from the user; the message is printed as `error: <message>`."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (`error: ... (see --help)`, exit status 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line messages are joined with '; ')."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError) adds quotes
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    text = "; ".join(parts) if parts else type(exc).__name__
    if not isinstance(exc, CLIError | ValueError | FileNotFoundError | KeyError | OSError):
        text = f"{type(exc).__name__}: {text}"
    return text


def quiet_logging(verbose: bool) -> None:
    """Orbax and absl log every restore at INFO; keep stderr for errors unless --verbose."""
    if verbose:
        return
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("absl", "orbax", "jax", "sif_jax"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_cli(main: Callable[[], Any], verbose: bool) -> None:
    """Runs `main()`; any exception becomes `error: <one line>` and exit status 1 (re-raised with
    the traceback when `verbose`)."""
    try:
        main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException as e:
        if verbose:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(1)


# ---------------------------------------------------------------------------- model configs


def describe_config(config: Any) -> str:
    """'tiny (text: 4 layers x 64 hidden, vocab 1024; vision: depth 4 x 32)' — the preset name
    when the architecture is one, else 'a custom model (...)'."""
    from sif_jax.model.family import presets

    name = next((n for n, f in presets().items() if same_architecture(f(), config)), None)
    t, v = config.text, config.vision
    depth = getattr(v, "depth", getattr(v, "num_layers", None))
    shape = (f"text: {t.num_layers} layers x {t.hidden_size} hidden, vocab {t.vocab_size}; "
             f"vision: depth {depth} x {v.hidden_size}")
    return f"{name} ({shape})" if name else f"a custom model ({shape})"


def same_architecture(a: Any, b: Any) -> bool:
    """Same vision tower, decoder and special-token ids (dtype and attention backend aside)."""
    ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "eos_token_id")
    return (type(a) is type(b) and a.vision == b.vision and a.text == b.text
            and all(getattr(a, k) == getattr(b, k) for k in ids))


def check_requested_model(config: Any, requested: str, checkpoint: str, flag: str = "--model") -> None:
    """Raises CLIError when `requested` (a preset name; "" = anything) is not the checkpoint's model."""
    if not requested:
        return
    from sif_jax.model.family import get_preset, presets

    if requested not in presets():
        raise CLIError(f"{flag}={requested!r}: unknown model preset; choose one of {sorted(presets())}")
    want = get_preset(requested)
    if not same_architecture(want, config):
        raise CLIError(f"checkpoint {checkpoint} holds {describe_config(config)}, but {flag}={requested} asks for "
                       f"{describe_config(want)}")


def checkpoint_kind(path: str) -> str:
    """'hf', 'params' or 'run' (see the module doc); CLIError when `path` is not a directory."""
    if not path:
        raise CLIError("no checkpoint given")
    if not os.path.exists(path):
        raise CLIError(f"checkpoint {path!r} does not exist")
    if not os.path.isdir(path):
        raise CLIError(f"checkpoint {path!r} is not a directory")
    if os.path.exists(os.path.join(path, "config.json")):
        return "hf"
    if os.path.exists(os.path.join(path, EXPORT_META)) and os.path.isdir(os.path.join(path, PARAMS_DIR)):
        return "params"
    return "run"


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise CLIError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(value, dict):
        raise CLIError(f"{path}: expected a JSON object")
    return value


def _run_meta(path: str) -> tuple[str, int, dict]:
    """(phase directory, step, meta) of the newest checkpoint of a run, without its arrays."""
    import orbax.checkpoint as ocp

    from sif_jax.checkpoint import latest_run_checkpoint

    try:
        directory, step = latest_run_checkpoint(path)
    except FileNotFoundError as e:
        raise CLIError(f"{e}; or give an HF directory (config.json + *.safetensors) or a sif_jax.export "
                       "directory") from None
    manager = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    finally:
        manager.close()
    if "model" not in meta:
        raise CLIError(f"{directory}/{step}: checkpoint metadata has no model config (written by an older sif_jax?)")
    return directory, step, meta


@dataclasses.dataclass
class CheckpointInfo:
    """What a checkpoint directory says about itself, read without loading the params."""

    path: str
    kind: str  # run | hf | params
    config: Any  # ModelConfig
    meta: dict  # run: the step's meta; params/hf: sif_jax.json (or {})
    location: str  # the directory holding the params (run: <phase>/<step>)
    step: int | None = None


def read_checkpoint_info(path: str, *, attention_backend: str = "", dtype: str = "") -> CheckpointInfo:
    """Kind, model config and metadata of `path` (no params loaded)."""
    from sif_jax.model.family import family_for_hf_config

    def from_hf_config(hf: dict, **fields: Any) -> Any:
        try:
            family = family_for_hf_config(hf)
        except ValueError as e:
            raise CLIError(f"checkpoint {path}: {e}") from None
        return family.from_hf_config(hf, **fields)

    kind = checkpoint_kind(path)
    path = os.path.abspath(path)  # orbax wants absolute paths
    overrides: dict[str, Any] = {"attention_backend": attention_backend or None}
    if kind == "hf":
        from sif_jax.convert.hf import read_hf_config

        hf = read_hf_config(path)
        meta = _read_json(os.path.join(path, EXPORT_META)) if os.path.exists(os.path.join(path, EXPORT_META)) else {}
        if dtype:
            overrides.update(dtype=dtype, param_dtype=dtype)
        return CheckpointInfo(path, kind, from_hf_config(hf, **overrides), meta, path)
    if kind == "params":
        meta = _read_json(os.path.join(path, EXPORT_META))
        if "model" not in meta:
            raise CLIError(f"{os.path.join(path, EXPORT_META)}: no 'model' config")
        saved = meta.get("dtype", "float32")
        config = from_hf_config(meta["model"], dtype=dtype or saved, param_dtype=dtype or saved,
                                attention_backend=attention_backend or None)
        return CheckpointInfo(path, kind, config, meta, os.path.join(path, PARAMS_DIR))
    directory, step, meta = _run_meta(path)
    saved = meta.get("dtype", "float32")
    config = from_hf_config(meta["model"], dtype=dtype or saved, param_dtype=dtype or saved,
                            attention_backend=attention_backend or None)
    return CheckpointInfo(path, kind, config, meta, os.path.join(directory, str(step)), step)


def _cast(params: Any, dtype: str) -> Any:
    import jax

    from sif_jax.model.layers import DTYPES

    target = np.dtype(DTYPES[dtype])
    return jax.tree.map(lambda x: np.asarray(x).astype(target, copy=False), params)


def load_params(info: CheckpointInfo) -> Any:
    """The params of `info` as host (NumPy) arrays in `info.config.param_dtype`."""
    import jax

    if info.kind == "hf":
        from sif_jax.convert.hf import load_hf_checkpoint

        _, params = load_hf_checkpoint(info.path, dtype=info.config.param_dtype)
    elif info.kind == "params":
        from sif_jax.checkpoint import load_params_dir

        params = load_params_dir(info.location)  # onto this process's device, whatever mesh wrote it
    else:
        from sif_jax.checkpoint import load_run_params

        _, params, _ = load_run_params(info.path)
    from sif_jax.model.layout import to_layout

    params = to_layout(jax.tree.map(np.asarray, params), info.config)  # a run may hold stacked layers
    return _cast(params, info.config.param_dtype)


# ---------------------------------------------------------------------------- tokenizers


def load_tokenizer(spec: str, info: CheckpointInfo, flag: str = "--tokenizer") -> Any:
    """`spec`: 'builtin', a tokenizer.json (or a directory holding one), or '' = the checkpoint's."""
    from sif_jax.data.tokenizer import BuiltinTokenizer

    def hf(path: str, origin: str) -> Any:
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise CLIError(f"{origin}: no tokenizer file at {path!r}")
        from sif_jax.model.family import family_of

        return family_of(info.config).load_tokenizer(path)

    if spec == "builtin":
        return BuiltinTokenizer()
    if spec:
        return hf(spec, f"{flag}={spec}")
    if info.kind == "run":
        saved = info.meta.get("tokenizer") or ""
        if not saved:
            return BuiltinTokenizer()
        if not os.path.isfile(saved):
            raise CLIError(f"the run was trained with the tokenizer {saved!r}, which is not there any more; "
                           f"give {flag}=path/to/tokenizer.json")
        return hf(saved, "checkpoint meta 'tokenizer'")
    saved = info.meta.get("tokenizer") or ""
    if saved == "builtin":
        return BuiltinTokenizer()
    if saved:
        return hf(saved if os.path.isabs(saved) else os.path.join(info.path, saved), f"{EXPORT_META} 'tokenizer'")
    if os.path.isfile(os.path.join(info.path, "tokenizer.json")):
        return hf(os.path.join(info.path, "tokenizer.json"), "the checkpoint's tokenizer.json")
    raise CLIError(f"{flag} is required for the HF checkpoint {info.path} (it holds no tokenizer.json): give "
                   "path/to/tokenizer.json, or 'builtin' for a model trained with the built-in tokenizer")


def check_tokenizer(tokenizer: Any, config: Any, flag: str = "--tokenizer") -> None:
    """The tokenizer's special ids and vocabulary must fit the model."""
    if tokenizer.vocab_size > config.text.vocab_size:
        raise CLIError(f"{flag}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary has "
                       f"{config.text.vocab_size}; wrong tokenizer for this checkpoint?")
    from sif_jax.model.family import family_of

    for name, want in family_of(config).tokenizer_ids(config).items():
        if getattr(tokenizer, name) != want:
            raise CLIError(f"{flag}: the tokenizer's {name}={getattr(tokenizer, name)} but the model expects {want}; "
                           "wrong tokenizer for this checkpoint?")


@dataclasses.dataclass
class LoadedModel:
    info: CheckpointInfo
    config: Any  # ModelConfig
    params: Any
    tokenizer: Any


def load_model(path: str, *, model: str = "", tokenizer: str = "", attention_backend: str = "", dtype: str = "",
               flag_prefix: str = "--", need_tokenizer: bool = True) -> LoadedModel:
    """Checkpoint -> (config, params on the default device, tokenizer), with the input checks."""
    import jax

    from sif_jax.model.family import presets
    from sif_jax.model.layers import DTYPES

    if model and model not in presets():
        raise CLIError(f"{flag_prefix}model={model!r}: unknown model preset; choose one of {sorted(presets())}")
    if dtype and dtype not in DTYPES:
        raise CLIError(f"{flag_prefix}dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    info = read_checkpoint_info(path, attention_backend=attention_backend, dtype=dtype)
    check_requested_model(info.config, model, path, flag=f"{flag_prefix}model")
    tok = None
    if need_tokenizer:
        tok = load_tokenizer(tokenizer, info, flag=f"{flag_prefix}tokenizer")
        check_tokenizer(tok, info.config, flag=f"{flag_prefix}tokenizer")
    params = jax.device_put(load_params(info))
    return LoadedModel(info, info.config, params, tok)


# ---------------------------------------------------------------------------- images


def read_image(path: str, what: str = "image") -> np.ndarray:
    """uint8 [H, W, 3] from an image file (`data.image.load_image`); CLIError naming the file when it
    cannot be read."""
    from sif_jax.data.image import load_image

    if not os.path.exists(path):
        raise CLIError(f"{what} {path!r} does not exist")
    try:
        return load_image(path)
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot read {what} {path!r}: {one_line(e)}") from None


def instruction_text(value: str) -> str | None:
    """'sif' -> the SIFThinker instruction, '' / 'none' -> no instruction, anything else as is."""
    from sif_jax.data.tokenizer import SIF_INSTRUCTION

    if value == "sif":
        return SIF_INSTRUCTION
    if value in ("", "none"):
        return None
    return value


# ---------------------------------------------------------------------------- config flags


def config_fields(config_path: str) -> list[str]:
    """Every leaf field of an ml_collections config file, dotted ('grpo.group_size'); [] if it cannot
    be loaded."""
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location("sif_config_for_suggestions", config_path)
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
        print(f"error: {config_flag_message(e, argv)} (see python -m {program} --helpfull)", file=sys.stderr)
        sys.exit(2)
