"""Validation of a run config (configs/grpo.py, configs/sft.py) before anything compiles.

Every error names the field and its value, e.g. `config.grpo.group_size=1: GRPO needs >= 2`.
"""

from __future__ import annotations

import os
import re
from typing import Any

import ml_collections

from sif_jax.data import sources
from sif_jax.data.prompts import get_prompt
from sif_jax.kernels.region_attention.ops import BACKENDS as KERNEL_BACKENDS
from sif_jax.model.config import REMAT_POLICIES
from sif_jax.model.family import presets
from sif_jax.parallel import MESH_AXES
from sif_jax.rl.loss import REDUCTIONS
from sif_jax.rl.rewards import REWARD_NAMES

BACKENDS = ("", *KERNEL_BACKENDS)  # "" = by platform


def _need(ok: bool, field: str, value: Any, why: str) -> None:
    if not ok:
        raise ValueError(f"config.{field}={value!r}: {why}")


def validate_config(c: ml_collections.ConfigDict, check_paths: bool = True, *, check_files: bool = True) -> None:
    """Raises ValueError naming the first bad field.

    `check_paths=False` leaves out the checks that paths exist (a config checked on one machine to
    run on another: `train --validate_only`); `check_files=False` also leaves out the checkpoint and
    tokenizer rules (a plan needs shapes only, see `sif_jax.plan`).
    """
    names = presets()
    _need(c.model in names, "model", c.model, f"choose one of {sorted(names)}")
    _need(c.attention_backend in BACKENDS, "attention_backend", c.attention_backend, f"choose one of {BACKENDS}")
    _need(c.get("remat_policy", "none") in REMAT_POLICIES, "remat_policy", c.get("remat_policy"),
          f"expected one of {REMAT_POLICIES}")
    if check_files:
        _check_files(c, check_paths)
    check = sources.check_spec if check_paths and check_files else sources.split_spec  # errors name the field
    check(c.data.source, "config.data.source")
    if c.data.get("eval_source", ""):
        check(c.data.eval_source, "config.data.eval_source")
    get_prompt(c.data.get("prompt", "builtin"))
    _check_fields(c)


def _check_lora(c: ml_collections.ConfigDict) -> None:
    if "lora" not in c:
        return
    lo = c.lora
    _need(isinstance(lo.rank, int) and lo.rank >= 0, "lora.rank", lo.rank, "must be an integer >= 0 (0 = off)")
    if lo.rank == 0:
        return
    _need(lo.alpha > 0, "lora.alpha", lo.alpha, "must be > 0")
    _need(0 <= lo.dropout < 1, "lora.dropout", lo.dropout, "must lie in [0, 1)")
    _need(len(lo.targets) > 0 and all(isinstance(t, str) and t for t in lo.targets), "lora.targets", lo.targets,
          "name at least one non-empty pattern")
    for pattern in lo.targets:
        try:
            re.compile(pattern)
        except re.error as e:
            _need(False, "lora.targets", pattern, f"is not a regular expression ({e})")
    _need(lo.get("base_dtype", "") in ("", "int8", "float8_e4m3fn"), "lora.base_dtype", lo.get("base_dtype"),
          "must be '' (the params' dtype), 'int8' or 'float8_e4m3fn'")


def _check_files(c: ml_collections.ConfigDict, check_paths: bool) -> None:
    if check_paths and c.get("lora") is not None and c.lora.rank > 0 and c.lora.init_adapter:
        _need(os.path.isfile(os.path.join(c.lora.init_adapter, "adapter_config.json")), "lora.init_adapter",
              c.lora.init_adapter, "is not a PEFT adapter directory (no adapter_config.json)")
    if c.init_checkpoint and check_paths:
        _need(os.path.isdir(c.init_checkpoint), "init_checkpoint", c.init_checkpoint, "is not a directory")
    hf_init = bool(c.init_checkpoint) and os.path.exists(os.path.join(c.init_checkpoint, "config.json"))
    if c.tokenizer and c.tokenizer != "builtin":
        _need(not check_paths or os.path.isfile(c.tokenizer), "tokenizer", c.tokenizer,
              "is not a file (expected tokenizer.json, or 'builtin')")
    elif c.tokenizer == "builtin" or not c.init_checkpoint:
        _need((c.model == "tiny" or c.model.endswith("_tiny")) and not hf_init, "tokenizer", c.tokenizer,
              "the built-in tokenizer only fits the tiny preset; give the checkpoint's tokenizer.json")


def _check_fields(c: ml_collections.ConfigDict) -> None:
    _need(c.data.image_size >= 56 and c.data.image_size % 28 == 0, "data.image_size", c.data.image_size,
          "must be a multiple of 28 and at least 56")
    _need(c.data.eval_examples >= 0, "data.eval_examples", c.data.eval_examples, "must be >= 0")
    _need(len(c.data.length_buckets) > 0 and list(c.data.length_buckets) == sorted(c.data.length_buckets),
          "data.length_buckets", c.data.length_buckets, "must be a non-empty increasing list")
    _need(len(c.data.patch_buckets) > 0 and all(b % 4 == 0 for b in c.data.patch_buckets), "data.patch_buckets",
          c.data.patch_buckets, "must be non-empty multiples of 4 (merge unit)")
    _need(c.sft.steps >= 0, "sft.steps", c.sft.steps, "must be >= 0")
    _need(c.sft.batch_size >= 1, "sft.batch_size", c.sft.batch_size, "must be >= 1")
    _need(c.sft.learning_rate > 0, "sft.learning_rate", c.sft.learning_rate, "must be > 0")
    _need(0 <= c.sft.warmup_fraction < 1, "sft.warmup_fraction", c.sft.warmup_fraction, "must lie in [0, 1)")
    g = c.grpo
    _need(g.steps >= 0, "grpo.steps", g.steps, "must be >= 0")
    _need(g.group_size >= 2, "grpo.group_size", g.group_size, "GRPO needs >= 2 samples per prompt")
    _need(g.prompts_per_step >= 1, "grpo.prompts_per_step", g.prompts_per_step, "must be >= 1")
    _need(g.micro_batch_prompts >= 1 and g.prompts_per_step % g.micro_batch_prompts == 0,
          "grpo.micro_batch_prompts", g.micro_batch_prompts,
          f"must divide grpo.prompts_per_step={g.prompts_per_step}")
    _need(g.mu >= 1, "grpo.mu", g.mu, "must be >= 1")
    _need(g.learning_rate > 0, "grpo.learning_rate", g.learning_rate, "must be > 0")
    _need(g.beta >= 0, "grpo.beta", g.beta, "must be >= 0")
    _need(0 <= g.eps_low < 1, "grpo.eps_low", g.eps_low, "must lie in [0, 1)")
    _need(g.eps_high >= 0, "grpo.eps_high", g.eps_high, "must be >= 0")
    _need(g.reduction in REDUCTIONS, "grpo.reduction", g.reduction, f"expected one of {', '.join(REDUCTIONS)}")
    _need(g.max_new_tokens >= 1, "grpo.max_new_tokens", g.max_new_tokens, "must be >= 1")
    _need(g.temperature >= 0, "grpo.temperature", g.temperature, "must be >= 0")
    _need(0 < g.top_p <= 1, "grpo.top_p", g.top_p, "must lie in (0, 1]")
    _need(g.top_k >= 0, "grpo.top_k", g.top_k, "must be >= 0")
    _need(isinstance(g.mask_truncated_completions, bool), "grpo.mask_truncated_completions",
          g.mask_truncated_completions, "must be True or False")
    _need(g.vocab_chunk >= 1, "grpo.vocab_chunk", g.vocab_chunk, "must be >= 1")
    _need(isinstance(g.get("share_prompts", True), bool), "grpo.share_prompts", g.get("share_prompts"),
          "must be True or False")
    _need(g.get("sampling_candidates", 256) >= 0, "grpo.sampling_candidates", g.get("sampling_candidates"),
          "must be >= 0 (0 = always sort the vocabulary)")
    _need(len(g.mass_layers) > 0, "grpo.mass_layers", g.mass_layers, "name at least one decoder layer")
    _check_lora(c)
    for name in REWARD_NAMES:
        _need(name in c.rewards, f"rewards.{name}", None, "missing reward weight")
    _need(0 < c.rewards.top_fraction <= 1, "rewards.top_fraction", c.rewards.top_fraction, "must lie in (0, 1]")
    for axis in MESH_AXES:
        size = c.mesh[axis]
        _need(size == -1 or size >= 1, f"mesh.{axis}", size, "must be -1 or >= 1")
    _need(c.checkpoint_every >= 1, "checkpoint_every", c.checkpoint_every, "must be >= 1")
    _need(c.log_every >= 1, "log_every", c.log_every, "must be >= 1")
