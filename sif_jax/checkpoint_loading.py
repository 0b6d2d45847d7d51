"""Finding and loading a model checkpoint for inference or as a training start.

Three kinds of checkpoint directory (`checkpoint_kind`):
    hf      a Hugging Face directory (`is_hf_dir`: config.json, plus *.safetensors read by
            `convert.hf.load_hf_checkpoint`);
    params  a params-only orbax export (`python -m sif_jax.export --format=orbax`): `params/` plus
            `sif_jax.json` (model config, dtype, tokenizer);
    run     a training run directory (`<workdir>/grpo/<step>` or `<workdir>/sft/<step>`, the newest
            params; or a phase directory itself), see `checkpoint.load_run_params`.

`read_checkpoint_info` reads the model config *before* the params, so asking for another model
size (`--model=qwen2_5_vl_3b` against a tiny checkpoint, `check_requested_model`) fails at once,
naming both. `load_tokenizer` finds the tokenizer: `builtin`, a tokenizer.json path, or (empty)
what the checkpoint says — the run's `tokenizer` meta field, `tokenizer.json` or `sif_jax.json`
inside an export / HF directory; `data.tokenizer.check_tokenizer` says whether it fits the model.
`load_model` does all of it. Bad input raises `errors.InputError` naming the path or flag.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from sif_jax.data.tokenizer import check_tokenizer
from sif_jax.errors import InputError

EXPORT_META = "sif_jax.json"  # written by sif_jax.export next to the params / safetensors
PARAMS_DIR = "params"
HF_CONFIG = "config.json"


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
    """Raises InputError when `requested` (a preset name; "" = anything) is not the checkpoint's model."""
    if not requested:
        return
    from sif_jax.model.family import get_preset, presets

    if requested not in presets():
        raise InputError(f"{flag}={requested!r}: unknown model preset; choose one of {sorted(presets())}")
    want = get_preset(requested)
    if not same_architecture(want, config):
        raise InputError(f"checkpoint {checkpoint} holds {describe_config(config)}, but {flag}={requested} asks for "
                         f"{describe_config(want)}")


# ---------------------------------------------------------------------------- discovery


def is_hf_dir(path: str) -> bool:
    """Is `path` a Hugging Face checkpoint directory: one holding config.json (its weights,
    *.safetensors, are read by `convert.hf.load_hf_checkpoint`, which names what is missing)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, HF_CONFIG))


def checkpoint_kind(path: str) -> str:
    """'hf', 'params' or 'run' (see the module doc); InputError when `path` is not a directory."""
    if not path:
        raise InputError("no checkpoint given")
    if not os.path.exists(path):
        raise InputError(f"checkpoint {path!r} does not exist")
    if not os.path.isdir(path):
        raise InputError(f"checkpoint {path!r} is not a directory")
    if is_hf_dir(path):
        return "hf"
    if os.path.exists(os.path.join(path, EXPORT_META)) and os.path.isdir(os.path.join(path, PARAMS_DIR)):
        return "params"
    return "run"


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object")
    return value


def _run_meta(path: str) -> tuple[str, int, dict]:
    """(phase directory, step, meta) of the newest checkpoint of a run, without its arrays."""
    import orbax.checkpoint as ocp

    from sif_jax.checkpoint import latest_run_checkpoint

    try:
        directory, step = latest_run_checkpoint(path)
    except FileNotFoundError as e:
        raise InputError(f"{e}; or give an HF directory (config.json + *.safetensors) or a sif_jax.export "
                         "directory") from None
    manager = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    finally:
        manager.close()
    if "model" not in meta:
        raise InputError(f"{directory}/{step}: checkpoint metadata has no model config (written by an older "
                         "sif_jax?)")
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
    """Kind, model config and metadata of `path` (no params loaded). `dtype` / `attention_backend`
    ("" = as saved / by platform) override the saved model config."""
    from sif_jax.model.family import family_for_hf_config

    def from_hf_config(hf: dict, **fields: Any) -> Any:
        try:
            family = family_for_hf_config(hf)
        except ValueError as e:
            raise InputError(f"checkpoint {path}: {e}") from None
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
            raise InputError(f"{os.path.join(path, EXPORT_META)}: no 'model' config")
        saved = meta.get("dtype", "float32")
        config = from_hf_config(meta["model"], dtype=dtype or saved, param_dtype=dtype or saved,
                                attention_backend=attention_backend or None)
        return CheckpointInfo(path, kind, config, meta, os.path.join(path, PARAMS_DIR))
    directory, step, meta = _run_meta(path)
    saved = meta.get("dtype", "float32")
    config = from_hf_config(meta["model"], dtype=dtype or saved, param_dtype=dtype or saved,
                            attention_backend=attention_backend or None)
    return CheckpointInfo(path, kind, config, meta, os.path.join(directory, str(step)), step)


# ---------------------------------------------------------------------------- loading


def _cast(params: Any, dtype: str) -> Any:
    import jax

    from sif_jax.model.layers import DTYPES

    target = np.dtype(DTYPES[dtype])
    return jax.tree.map(lambda x: np.asarray(x).astype(target, copy=False), params)


def load_params(info: CheckpointInfo) -> Any:
    """The params of `info` as host (NumPy) arrays in `info.config.param_dtype`, in the layer
    layout `info.config` asks for (`model.layout.to_layout`)."""
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


def load_tokenizer(spec: str, info: CheckpointInfo, flag: str = "--tokenizer") -> Any:
    """`spec`: 'builtin', a tokenizer.json (or a directory holding one), or '' = the checkpoint's.
    InputError naming `flag` (or the checkpoint field) when the file is missing."""
    from sif_jax.data.tokenizer import BuiltinTokenizer

    def hf(path: str, origin: str) -> Any:
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise InputError(f"{origin}: no tokenizer file at {path!r}")
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
            raise InputError(f"the run was trained with the tokenizer {saved!r}, which is not there any more; "
                             f"give {flag}=path/to/tokenizer.json")
        return hf(saved, "checkpoint meta 'tokenizer'")
    saved = info.meta.get("tokenizer") or ""
    if saved == "builtin":
        return BuiltinTokenizer()
    if saved:
        return hf(saved if os.path.isabs(saved) else os.path.join(info.path, saved), f"{EXPORT_META} 'tokenizer'")
    if os.path.isfile(os.path.join(info.path, "tokenizer.json")):
        return hf(os.path.join(info.path, "tokenizer.json"), "the checkpoint's tokenizer.json")
    raise InputError(f"{flag} is required for the HF checkpoint {info.path} (it holds no tokenizer.json): give "
                     "path/to/tokenizer.json, or 'builtin' for a model trained with the built-in tokenizer")


@dataclasses.dataclass
class LoadedModel:
    info: CheckpointInfo
    config: Any  # ModelConfig
    params: Any
    tokenizer: Any


def load_model(path: str, *, model: str = "", tokenizer: str = "", attention_backend: str = "", dtype: str = "",
               flag_prefix: str = "--", need_tokenizer: bool = True) -> LoadedModel:
    """Checkpoint -> (config, params on the default device, tokenizer), with the input checks;
    `flag_prefix` ('--' or '--config.') names the flags in the errors."""
    import jax

    from sif_jax.model.family import presets
    from sif_jax.model.layers import DTYPES

    if model and model not in presets():
        raise InputError(f"{flag_prefix}model={model!r}: unknown model preset; choose one of {sorted(presets())}")
    if dtype and dtype not in DTYPES:
        raise InputError(f"{flag_prefix}dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    info = read_checkpoint_info(path, attention_backend=attention_backend, dtype=dtype)
    check_requested_model(info.config, model, path, flag=f"{flag_prefix}model")
    tok = None
    if need_tokenizer:
        tok = load_tokenizer(tokenizer, info, flag=f"{flag_prefix}tokenizer")
        check_tokenizer(tok, info.config, what=f"{flag_prefix}tokenizer")
    params = jax.device_put(load_params(info))
    return LoadedModel(info, info.config, params, tok)


def load_vision_tower(path: str, visual: Any, field: str = "config.vision_init") -> Any:
    """The vision tower params `visual` (the `params["visual"]` tree) replaced by the arrays of the
    .npz at `path`, keyed by `jax.tree_util.keystr` of each leaf's path (what
    `benchmarks/vision_cells.py --save` writes: a tower pre-trained on per-cell object labels), cast to
    each leaf's dtype. ValueError naming `field`, the file and the leaf for a missing file, a missing
    or extra leaf or another shape."""
    import jax

    if not os.path.isfile(path):
        raise ValueError(f"{field}={path!r}: no such file")
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files}

    def take(key_path: Any, leaf: Any) -> Any:
        key = jax.tree_util.keystr(key_path)
        if key not in arrays:
            raise ValueError(f"{field}={path!r}: no array for the vision tower's {key} (saved for another model "
                             "or layer layout?)")
        if arrays[key].shape != leaf.shape:
            raise ValueError(f"{field}={path!r}: {key} has shape {arrays[key].shape}, the model's is {leaf.shape}")
        return jax.numpy.asarray(arrays[key], leaf.dtype)

    out = jax.tree_util.tree_map_with_path(take, visual)
    extra = sorted(set(arrays) - {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(visual)})
    if extra:
        raise ValueError(f"{field}={path!r}: {len(extra)} arrays the model's vision tower does not have, e.g. "
                         f"{extra[0]} (saved for another model?)")
    return out
