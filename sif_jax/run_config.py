"""The run config as frozen dataclasses, built once from a config file (configs/grpo.py, configs/sft.py).

The config files stay ml_collections `get_config(arg)` files, so `--config.grpo.steps=100` overrides
keep working; `build` turns the ConfigDict into a `RunConfig` before anything compiles, and the
training code reads only the typed config. Each section checks its own fields in `__post_init__`;
the rules that need the file system or more than one section are in `check_run`. Every error names
the field and its value, e.g. `config.grpo.group_size=1: GRPO needs >= 2 samples per prompt`.

Adding a GRPO knob: the field with its default and comment in configs/grpo.py, the field with its
check in `GRPOSettings` here, and its use (`train.grpo_settings` when it reaches `rl.grpo.GRPOConfig`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import ml_collections

from sif_jax.data import sources
from sif_jax.data.prompts import get_prompt
from sif_jax.infer.sampler import SamplingConfig
from sif_jax.kernels.region_attention.ops import BACKENDS as KERNEL_BACKENDS
from sif_jax.lora import BASE_DTYPES as LORA_BASE_DTYPES
from sif_jax.lora import DEFAULT_TARGETS, LoraConfig
from sif_jax.model.config import REMAT_POLICIES
from sif_jax.model.family import get_preset, presets
from sif_jax.parallel import MESH_AXES
from sif_jax.rl.loss import REDUCTIONS
from sif_jax.rl.rewards import REWARD_NAMES

BACKENDS = ("", *KERNEL_BACKENDS)  # "" = by platform


def _need(ok: bool, field: str, value: Any, why: str) -> None:
    if not ok:
        raise ValueError(f"config.{field}={value!r}: {why}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """Which model and how it runs: `config.model` (a preset name), `init_checkpoint`, `tokenizer`,
    `attention_backend`, `scan_layers`, `remat_policy`, `freeze_vision` (GRPO leaves the vision tower fixed),
    `vision_init` (an .npz of vision tower params, `checkpoint_loading.load_vision_tower`)."""

    KEYS: ClassVar[dict[str, str]] = {"preset": "model"}  # dataclass field -> config key, where they differ

    preset: str = "tiny"
    init_checkpoint: str = ""
    tokenizer: str = ""
    attention_backend: str = ""
    scan_layers: bool = False
    remat_policy: str = "none"
    freeze_vision: bool = True
    vision_init: str = ""

    def __post_init__(self) -> None:
        names = presets()
        _need(self.preset in names, "model", self.preset, f"choose one of {sorted(names)}")
        _need(self.attention_backend in BACKENDS, "attention_backend", self.attention_backend,
              f"choose one of {BACKENDS}")
        _need(self.remat_policy in REMAT_POLICIES, "remat_policy", self.remat_policy,
              f"expected one of {REMAT_POLICIES}")
        _need(isinstance(self.scan_layers, bool), "scan_layers", self.scan_layers, "must be True or False")
        _need(isinstance(self.freeze_vision, bool), "freeze_vision", self.freeze_vision, "must be True or False")

    @property
    def is_tiny(self) -> bool:
        """The presets the built-in tokenizer fits (tiny, small and each family's *_tiny)."""
        return self.preset in ("tiny", "small") or self.preset.endswith("_tiny")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`config.data`: where examples come from (`data.sources` specs) and how they are bucketed."""

    source: str = "builtin"
    eval_source: str = ""
    strict_records: bool = False
    prompt: str = "builtin"
    image_size: int = 224
    eval_examples: int = 64
    length_buckets: tuple[int, ...] = (192, 512, 640)
    patch_buckets: tuple[int, ...] = (256,)
    min_pixels: int | None = None  # None = the model family's bounds (`family.pixel_bounds`)
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        sources.split_spec(self.source, "config.data.source")  # the syntax; `check_run` checks the paths
        if self.eval_source:
            sources.split_spec(self.eval_source, "config.data.eval_source")
        get_prompt(self.prompt)
        _need(isinstance(self.strict_records, bool), "data.strict_records", self.strict_records,
              "must be True or False")
        _need(self.image_size >= 56 and self.image_size % 28 == 0, "data.image_size", self.image_size,
              "must be a multiple of 28 and at least 56")
        _need(self.eval_examples >= 0, "data.eval_examples", self.eval_examples, "must be >= 0")
        _need(len(self.length_buckets) > 0 and list(self.length_buckets) == sorted(self.length_buckets),
              "data.length_buckets", self.length_buckets, "must be a non-empty increasing list")
        _need(len(self.patch_buckets) > 0 and all(b % 4 == 0 for b in self.patch_buckets), "data.patch_buckets",
              self.patch_buckets, "must be non-empty multiples of 4 (merge unit)")
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            _need(value is None or (_is_int(value) and value > 0), f"data.{name}", value,
                  "must be a positive integer (or unset: the model family's bound)")
        if self.min_pixels is not None and self.max_pixels is not None:
            _need(self.min_pixels <= self.max_pixels, "data.min_pixels", self.min_pixels,
                  f"must be <= data.max_pixels={self.max_pixels}")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """`config.sft`: the warm-up (AdamW, linear warm-up then cosine decay, `train.sft_schedule`)."""

    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_fraction: float = 0.1
    answer_weight: float = 1.0
    caption_fraction: float = 0.0
    region_attention_weight: float = 0.0
    region_attention_layers: tuple[int, ...] = (-1,)
    freeze_vision: bool = False

    def __post_init__(self) -> None:
        _need(_is_int(self.steps) and self.steps >= 0, "sft.steps", self.steps, "must be >= 0")
        _need(_is_int(self.batch_size) and self.batch_size >= 1, "sft.batch_size", self.batch_size, "must be >= 1")
        _need(self.learning_rate > 0, "sft.learning_rate", self.learning_rate, "must be > 0")
        _need(0 <= self.warmup_fraction < 1, "sft.warmup_fraction", self.warmup_fraction, "must lie in [0, 1)")
        _need(self.answer_weight > 0, "sft.answer_weight", self.answer_weight, "must be > 0")
        _need(0 <= self.caption_fraction <= 1, "sft.caption_fraction", self.caption_fraction, "must lie in [0, 1]")
        _need(self.region_attention_weight >= 0, "sft.region_attention_weight", self.region_attention_weight,
              "must be >= 0")
        _need(len(self.region_attention_layers) > 0 and all(_is_int(i) for i in self.region_attention_layers),
              "sft.region_attention_layers", self.region_attention_layers, "name at least one decoder layer")
        _need(isinstance(self.freeze_vision, bool), "sft.freeze_vision", self.freeze_vision, "must be True or False")


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """`config.grpo`: the GRPO phase, its sampling and its scoring pass (`rl.grpo.GRPOConfig` is
    built from it in `train.grpo_settings`; METHODS §1 has the formulas)."""

    steps: int = 30
    prompts_per_step: int = 8
    micro_batch_prompts: int = 8
    group_size: int = 4
    mu: int = 1
    learning_rate: float = 1e-4
    beta: float = 0.04
    eps_low: float = 0.2
    eps_high: float = 0.2
    reduction: str = "sequence_mean"
    max_new_tokens: int = 320
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    sampling_candidates: int = 256
    mass_layers: tuple[int, ...] = (-1,)
    vocab_chunk: int = 4096
    mask_truncated_completions: bool = False
    share_prompts: bool = True

    def __post_init__(self) -> None:
        _need(self.steps >= 0, "grpo.steps", self.steps, "must be >= 0")
        _need(self.group_size >= 2, "grpo.group_size", self.group_size, "GRPO needs >= 2 samples per prompt")
        _need(self.prompts_per_step >= 1, "grpo.prompts_per_step", self.prompts_per_step, "must be >= 1")
        _need(self.micro_batch_prompts >= 1 and self.prompts_per_step % self.micro_batch_prompts == 0,
              "grpo.micro_batch_prompts", self.micro_batch_prompts,
              f"must divide grpo.prompts_per_step={self.prompts_per_step}")
        _need(self.mu >= 1, "grpo.mu", self.mu, "must be >= 1")
        _need(self.learning_rate > 0, "grpo.learning_rate", self.learning_rate, "must be > 0")
        _need(self.beta >= 0, "grpo.beta", self.beta, "must be >= 0")
        _need(0 <= self.eps_low < 1, "grpo.eps_low", self.eps_low, "must lie in [0, 1)")
        _need(self.eps_high >= 0, "grpo.eps_high", self.eps_high, "must be >= 0")
        _need(self.reduction in REDUCTIONS, "grpo.reduction", self.reduction,
              f"expected one of {', '.join(REDUCTIONS)}")
        _need(self.max_new_tokens >= 1, "grpo.max_new_tokens", self.max_new_tokens, "must be >= 1")
        _need(self.temperature >= 0, "grpo.temperature", self.temperature, "must be >= 0")
        _need(0 < self.top_p <= 1, "grpo.top_p", self.top_p, "must lie in (0, 1]")
        _need(self.top_k >= 0, "grpo.top_k", self.top_k, "must be >= 0")
        _need(isinstance(self.mask_truncated_completions, bool), "grpo.mask_truncated_completions",
              self.mask_truncated_completions, "must be True or False")
        _need(_is_int(self.vocab_chunk) and self.vocab_chunk >= 1, "grpo.vocab_chunk", self.vocab_chunk,
              "must be >= 1")
        _need(isinstance(self.share_prompts, bool), "grpo.share_prompts", self.share_prompts, "must be True or False")
        _need(_is_int(self.sampling_candidates) and self.sampling_candidates >= 0, "grpo.sampling_candidates",
              self.sampling_candidates, "must be >= 0 (0 = always sort the vocabulary)")
        _need(len(self.mass_layers) > 0, "grpo.mass_layers", self.mass_layers, "name at least one decoder layer")

    @property
    def micro_batches(self) -> int:
        """Micro-batches per step: prompts_per_step / micro_batch_prompts."""
        return self.prompts_per_step // self.micro_batch_prompts

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, candidates=self.sampling_candidates)


@dataclasses.dataclass(frozen=True)
class RewardSettings:
    """`config.rewards`: one weight per name of `rl.rewards.REWARD_NAMES`, and `top_fraction` (the
    share of highest-entropy completion tokens whose attention TAS averages)."""

    weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {n: (0.0 if n == "sayo_format" else 1.0) for n in REWARD_NAMES})
    top_fraction: float = 0.3

    def __post_init__(self) -> None:
        for name in REWARD_NAMES:
            _need(name in self.weights, f"rewards.{name}", None, "missing reward weight")
            value = self.weights[name]
            _need(isinstance(value, (int, float)) and not isinstance(value, bool), f"rewards.{name}", value,
                  "must be a number")
        _need(0 < self.top_fraction <= 1, "rewards.top_fraction", self.top_fraction, "must lie in (0, 1]")


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """`config.lora`: rank 0 = full fine-tuning; else adapters W + (alpha / r) A @ B on the kernels
    the `targets` regexes select, optionally started from a PEFT adapter directory (`init_adapter`)."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    init_adapter: str = ""
    base_dtype: str = ""  # "" (the params' dtype) | int8 | float8_e4m3fn: the frozen base, quantised (`lora`)

    def __post_init__(self) -> None:
        _need(_is_int(self.rank) and self.rank >= 0, "lora.rank", self.rank, "must be an integer >= 0 (0 = off)")
        if self.rank == 0:
            return
        _need(self.base_dtype in LORA_BASE_DTYPES, "lora.base_dtype", self.base_dtype,
              "must be '' (the params' dtype), 'int8' or 'float8_e4m3fn'")
        _need(self.alpha > 0, "lora.alpha", self.alpha, "must be > 0")
        _need(0 <= self.dropout < 1, "lora.dropout", self.dropout, "must lie in [0, 1)")
        _need(len(self.targets) > 0 and all(isinstance(t, str) and t for t in self.targets), "lora.targets",
              self.targets, "name at least one non-empty pattern")
        for pattern in self.targets:
            try:
                re.compile(pattern)
            except re.error as e:
                _need(False, "lora.targets", pattern, f"is not a regular expression ({e})")

    @property
    def config(self) -> LoraConfig | None:
        """The adapters' `lora.LoraConfig`; None when rank is 0 (full fine-tuning)."""
        if self.rank == 0:
            return None
        return LoraConfig(rank=self.rank, alpha=float(self.alpha), dropout=float(self.dropout),
                          targets=tuple(self.targets) or DEFAULT_TARGETS, base_dtype=self.base_dtype)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """`config.mesh`: devices per axis of `parallel.MESH_AXES`; -1 = all remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self) -> None:
        for axis in MESH_AXES:
            size = getattr(self, axis)
            _need(_is_int(size) and (size == -1 or size >= 1), f"mesh.{axis}", size, "must be -1 or >= 1")

    def axes(self) -> dict[str, int]:
        return {axis: getattr(self, axis) for axis in MESH_AXES}


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """`config.distributed`: jax.distributed settings; empty / 0 / -1 = discovered (Cloud TPU)."""

    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1

    def __post_init__(self) -> None:
        _need(self.num_processes >= 0, "distributed.num_processes", self.num_processes, "must be >= 0 (0 = not set)")
        _need(self.process_id >= -1, "distributed.process_id", self.process_id, "must be >= -1 (-1 = not set)")


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """`config.checkpoint_every` (steps between saves; the last step and a preemption always save)
    and `config.max_checkpoints` (how many a phase keeps)."""

    KEYS: ClassVar[dict[str, str]] = {"every": "checkpoint_every", "max_to_keep": "max_checkpoints"}

    every: int = 20
    max_to_keep: int = 2

    def __post_init__(self) -> None:
        _need(_is_int(self.every) and self.every >= 1, "checkpoint_every", self.every, "must be >= 1")
        _need(_is_int(self.max_to_keep) and self.max_to_keep >= 1, "max_checkpoints", self.max_to_keep,
              "must be >= 1")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run: its sections, plus `workdir` (local or gs://), `seed` and `log_every` (steps
    between log lines)."""

    model: ModelChoice = dataclasses.field(default_factory=ModelChoice)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
    grpo: GRPOSettings = dataclasses.field(default_factory=GRPOSettings)
    rewards: RewardSettings = dataclasses.field(default_factory=RewardSettings)
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    checkpointing: Checkpointing = dataclasses.field(default_factory=Checkpointing)
    workdir: str = "workdir/grpo"
    seed: int = 0
    log_every: int = 5

    def __post_init__(self) -> None:
        _need(_is_int(self.seed), "seed", self.seed, "must be an integer")
        _need(_is_int(self.log_every) and self.log_every >= 1, "log_every", self.log_every, "must be >= 1")
        _need(self.sft.region_attention_weight == 0 or not self.model.scan_layers, "sft.region_attention_weight",
              self.sft.region_attention_weight, "region-attention supervision records each decoder layer's queries "
              "and keys: needs scan_layers=False")
        _need(self.sft.caption_fraction == 0 or self.data.source == "builtin", "sft.caption_fraction",
              self.sft.caption_fraction, f"grounding captions need the built-in task's scenes, not "
              f"config.data.source={self.data.source!r}")

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


# Sections read from a sub-dict of the ConfigDict (config.<name>.*) ...
_SECTIONS: dict[str, type] = {"data": DataConfig, "sft": SFTConfig, "grpo": GRPOSettings, "lora": LoraSettings,
                              "mesh": MeshConfig, "distributed": DistributedConfig}
# ... and those whose fields are top-level keys (config.model, config.checkpoint_every, ...).
_FLAT: dict[str, type] = {"model": ModelChoice, "checkpointing": Checkpointing}
_TOP = ("workdir", "seed", "log_every")


def _config_key(cls: type, field: str) -> str:
    return getattr(cls, "KEYS", {}).get(field, field)


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return value


def _unknown(path: str, key: str, value: Any, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {path}{close[0]!r}?" if close else f"known: {sorted(known)}"
    return ValueError(f"config.{path}{key}={value!r}: unknown field; {hint}")


def _section(cls: type, values: Mapping[str, Any], path: str) -> Any:
    keys = {_config_key(cls, f.name): f.name for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in keys:
            raise _unknown(path, key, value, list(keys))
    return cls(**{keys[k]: _plain(v) for k, v in values.items()})


def _rewards(values: Mapping[str, Any]) -> RewardSettings:
    known = [*REWARD_NAMES, "top_fraction"]
    for key, value in values.items():
        if key not in known:
            raise _unknown("rewards.", key, value, known)
    weights = {name: values[name] for name in REWARD_NAMES if name in values}
    for name in REWARD_NAMES:
        _need(name in weights, f"rewards.{name}", None, "missing reward weight")
    return RewardSettings(weights={k: float(v) if _is_int(v) else v for k, v in weights.items()},
                          top_fraction=values.get("top_fraction", 0.3))


def from_config_dict(c: ml_collections.ConfigDict | Mapping[str, Any]) -> RunConfig:
    """The typed config of a ConfigDict (or plain dict), each section checked as it is built.

    Missing fields take the dataclass defaults; an unknown field is a ValueError naming the closest
    known one. Raises ValueError naming the first bad field. The rules that look at files or span
    sections are `check_run`'s (`build` runs both)."""
    d = c.to_dict() if isinstance(c, ml_collections.ConfigDict) else dict(c)
    flat_keys = {_config_key(cls, f.name): (name, f.name) for name, cls in _FLAT.items()
                 for f in dataclasses.fields(cls)}
    known_top = [*_SECTIONS, "rewards", *flat_keys, *_TOP]
    flat: dict[str, dict[str, Any]] = {name: {} for name in _FLAT}
    top: dict[str, Any] = {}
    for key, value in d.items():
        if key in flat_keys:
            section, field = flat_keys[key]
            flat[section][_config_key(_FLAT[section], field)] = value
        elif key in _TOP:
            top[key] = value
        elif key not in _SECTIONS and key != "rewards":
            raise _unknown("", key, value, known_top)
    parts: dict[str, Any] = {name: _section(cls, flat[name], "") for name, cls in _FLAT.items()}
    for name, cls in _SECTIONS.items():
        parts[name] = _section(cls, d.get(name) or {}, f"{name}.")
    if "rewards" in d:
        parts["rewards"] = _rewards(d["rewards"] or {})
    return RunConfig(**parts, **top)


def check_run(rc: RunConfig, check_paths: bool = True, *, check_files: bool = True) -> None:
    """The rules of a run that look at the file system or at more than one field of a section.

    `check_paths=False` leaves out the checks that paths exist (a config checked on one machine to
    run on another: `train --validate_only`); `check_files=False` also leaves out the checkpoint and
    tokenizer rules (a plan needs shapes only, see `sif_jax.plan`). Raises ValueError (FileNotFoundError
    for a data path that does not exist) naming the field."""
    if not check_files:
        return
    m, lo = rc.model, rc.lora
    if check_paths and lo.rank > 0 and lo.init_adapter:
        _need(os.path.isfile(os.path.join(lo.init_adapter, "adapter_config.json")), "lora.init_adapter",
              lo.init_adapter, "is not a PEFT adapter directory (no adapter_config.json)")
    if m.init_checkpoint and check_paths:
        _need(os.path.isdir(m.init_checkpoint), "init_checkpoint", m.init_checkpoint, "is not a directory")
    if m.vision_init:
        _need(not m.init_checkpoint, "vision_init", m.vision_init,
              f"would replace the vision tower of config.init_checkpoint={m.init_checkpoint!r}; set one of them")
        _need(not check_paths or os.path.isfile(m.vision_init), "vision_init", m.vision_init,
              "is not a file (an .npz of vision tower params, benchmarks/vision_cells.py --save)")
    if rc.sft.region_attention_weight > 0:
        from sif_jax.region_supervision import layer_indices

        layer_indices(rc.sft.region_attention_layers, get_preset(m.preset).text.num_layers)  # ValueError naming it
    hf_init = bool(m.init_checkpoint) and os.path.exists(os.path.join(m.init_checkpoint, "config.json"))
    if m.tokenizer and m.tokenizer != "builtin":
        _need(not check_paths or os.path.isfile(m.tokenizer), "tokenizer", m.tokenizer,
              "is not a file (expected tokenizer.json, or 'builtin')")
    elif m.tokenizer == "builtin" or not m.init_checkpoint:
        _need(m.is_tiny and not hf_init, "tokenizer", m.tokenizer,
              "the built-in tokenizer only fits the tiny and small presets; give the checkpoint's tokenizer.json")
    if check_paths:
        sources.check_spec(rc.data.source, "config.data.source")
        if rc.data.eval_source:
            sources.check_spec(rc.data.eval_source, "config.data.eval_source")


def build(c: ml_collections.ConfigDict | RunConfig, check_paths: bool = True, *,
          check_files: bool = True) -> RunConfig:
    """`from_config_dict` (a RunConfig passes through) then `check_run`: the one place a run config
    is read. Raises ValueError (or FileNotFoundError for a missing data path) naming the field."""
    rc = c if isinstance(c, RunConfig) else from_config_dict(c)
    check_run(rc, check_paths, check_files=check_files)
    return rc


validate_config = build  # the name the command lines and tests use
