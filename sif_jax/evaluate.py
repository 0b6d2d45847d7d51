"""`python -m sif_jax.evaluate`: accuracy and target attention score (TAS) of a checkpoint.

    python -m sif_jax.evaluate --config=configs/eval.py --config.checkpoint=workdir/grpo \
        [--config.decoding=adaptvis] [--config.data.source=vsr:<file.jsonl>:<image_dir>] [--verbose]

A thin command line: the data source comes from `data.sources.eval_source` (the built-in task's
test split, or local GQA / VSR / WhatsUp / SIF-50K files through `sif_jax.data.records`), the
checkpoint from `checkpoint_loading.load_model`, the metrics from `evaluation.evaluate_batches`
(see that module for what is measured; configs/eval.py lists the fields). An invalid record is
skipped and counted (`summary.skipped`, `skipped_records`: count, first ids and problems) unless
`data.strict_records`. It prints a table and writes a JSON report
`{"summary", "skipped_records", "config", "checkpoint", "rows"}` (TAS / IoU of a source without
boxes are null). Bad input is one `error: ...` line and exit status 1 (`cli.run_cli`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from sif_jax.evaluation import METRICS, EvalResult, eval_batches, evaluate_batches, format_table
from sif_jax.infer.adaptvis import AdaptVisConfig, answer_tag_ids, output_format_for_instruction
from sif_jax.rl.rewards import RewardConfig

DECODINGS = ("greedy", "adaptvis")  # config.decoding


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def validate_eval_config(c: Any) -> None:
    """ValueError naming the first bad field of an eval config."""
    def need(ok: bool, field: str, why: str) -> None:
        if not ok:
            value = c
            for part in field.split("."):
                value = value[part]
            raise ValueError(f"config.{field}={value!r}: {why}")

    need(bool(c.checkpoint), "checkpoint", "required: a run directory, an HF directory or a sif_jax.export directory")
    need(c.decoding in DECODINGS, "decoding", f"expected one of {', '.join(DECODINGS)}")
    need(c.alpha_low > 0, "alpha_low", "must be > 0")
    need(c.alpha_high > 0, "alpha_high", "must be > 0")
    need(0 < c.threshold < 1, "threshold", "must lie in (0, 1)")
    need(c.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
    need(c.batch_size >= 1, "batch_size", "must be >= 1")
    need(len(c.mass_layers) > 0, "mass_layers", "name at least one decoder layer")
    need(0 < c.top_fraction <= 1, "top_fraction", "must lie in (0, 1]")
    need(c.data.num_examples >= 0, "data.num_examples", "must be >= 0")
    need(c.data.image_size >= 56 and c.data.image_size % 28 == 0, "data.image_size",
         "must be a multiple of 28 and at least 56")
    need(len(c.data.length_buckets) > 0 and list(c.data.length_buckets) == sorted(c.data.length_buckets),
         "data.length_buckets", "must be a non-empty increasing list")
    need(all(b % 4 == 0 for b in c.data.patch_buckets), "data.patch_buckets", "must be multiples of 4")
    if c.data.min_pixels is not None and c.data.max_pixels is not None:  # None: the model family's bounds
        need(0 < c.data.min_pixels <= c.data.max_pixels, "data.min_pixels", "must lie in (0, data.max_pixels]")
    from sif_jax.data.prompts import PROMPTS

    need(c.data.get("prompt", "builtin") in PROMPTS, "data.prompt", f"choose one of {sorted(PROMPTS)}")


def run_eval(c: Any) -> dict[str, Any]:
    """The command line's work: returns the report (also written to `c.output` when set)."""
    from sif_jax.checkpoint_loading import describe_config, load_model
    from sif_jax.data.pipeline import PreprocessConfig, Preprocessor
    from sif_jax.data.prompts import get_prompt, instruction_text
    from sif_jax.data.sources import eval_source
    from sif_jax.errors import InputError

    validate_eval_config(c)
    if c.output:  # fail before the evaluation, not after it
        os.makedirs(os.path.dirname(os.path.abspath(c.output)), exist_ok=True)
        if os.path.isdir(c.output):
            raise InputError(f"config.output={c.output!r} is a directory; give a file name")
    source = eval_source(c.data)  # data errors before the (possibly slow) checkpoint load
    skipped = getattr(source, "skipped", None)
    if skipped is not None and skipped.count:
        print(f"warning: {skipped.summary('records')}", file=sys.stderr, flush=True)
    loaded = load_model(c.checkpoint, model=c.model, tokenizer=c.tokenizer, attention_backend=c.attention_backend,
                        dtype=c.dtype, flag_prefix="--config.")
    config, tok = loaded.config, loaded.tokenizer
    for layer in c.mass_layers:
        if not -config.text.num_layers <= layer < config.text.num_layers:
            raise InputError(f"config.mass_layers={tuple(c.mass_layers)}: layer {layer} is outside the model's "
                           f"{config.text.num_layers} decoder layers")
    options = PreprocessConfig(min_pixels=c.data.min_pixels, max_pixels=c.data.max_pixels,
                               instruction=instruction_text(c.data.instruction))
    prompt_name = c.data.get("prompt", "builtin")
    if prompt_name != "builtin":  # a seed's wording (data/prompts.py) instead of data.instruction
        prompt = get_prompt(prompt_name)
        options = dataclasses.replace(options, system_prompt=prompt.system, instruction=prompt.instruction,
                                      instruction_separator=prompt.separator, depth_image=prompt.depth_image)
    pre = Preprocessor(tok, config, options)
    adaptvis = None
    if c.decoding == "adaptvis":
        adaptvis = AdaptVisConfig(alpha_low=c.alpha_low, alpha_high=c.alpha_high, threshold=c.threshold)
    answer_tag = answer_tag_ids(tok, output_format_for_instruction(c.data.instruction))
    batches = eval_batches(source, pre, batch_size=c.batch_size, length_buckets=c.data.length_buckets,
                           patch_buckets=c.data.patch_buckets)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    total = len(source)
    for batch in batches:
        result = evaluate_batches(
            loaded.params, [batch], config=config, decode=tok.decode, max_new_tokens=c.max_new_tokens,
            mass_layers=tuple(c.mass_layers), eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
            reward_config=RewardConfig(top_fraction=c.top_fraction), adaptvis=adaptvis, answer_tag=answer_tag,
        )
        rows.extend(result.rows)
        print(f"  {len(rows)}/{total} examples ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    summary = EvalResult(rows).summary()
    for key in METRICS:
        summary.setdefault(key, None)
    summary["skipped"] = skipped.count if skipped is not None else 0
    report = {
        "summary": summary,
        "skipped_records": skipped.to_json() if skipped is not None else {"count": 0, "ids": [], "errors": []},
        "checkpoint": {"path": c.checkpoint, "kind": loaded.info.kind, "location": loaded.info.location,
                       "step": loaded.info.step, "model": describe_config(config)},
        "decoding": {"mode": c.decoding, **({"alpha_low": c.alpha_low, "alpha_high": c.alpha_high,
                                             "threshold": c.threshold} if adaptvis else {})},
        "config": json.loads(c.to_json_best_effort()),
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }
    if c.output:
        with open(c.output, "w") as f:
            json.dump(report, f, indent=1, default=_json_default)
    return report


def main(argv: Sequence[str]) -> None:
    from absl import flags

    from sif_jax.cli import quiet_logging, run_cli

    del argv
    verbose = flags.FLAGS.verbose
    quiet_logging(verbose)

    def work() -> None:
        c = _CONFIG.value
        if c is None:
            raise ValueError("--config is required, e.g. --config=configs/eval.py --config.checkpoint=workdir/grpo")
        report = run_eval(c)
        s = report["summary"]
        where = f"{c.data.source}" + (f" (test split, {c.data.num_examples} examples)" if c.data.source == "builtin"
                                      else "")
        print(f"checkpoint: {c.checkpoint} ({report['checkpoint']['kind']}, {report['checkpoint']['model']})")
        print(f"data: {where}; decoding: {c.decoding}; {s.get('examples', 0)} examples, "
              f"{s.get('examples_with_boxes', 0)} with target boxes; {report['seconds']:.1f} s")
        if s.get("skipped"):
            print(f"skipped {s['skipped']} invalid record(s): ids "
                  f"{', '.join(report['skipped_records']['ids'])} (see the report's skipped_records)")
        print(format_table(s))
        if c.output:
            print(f"report: {c.output}")

    run_cli(work, verbose)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or config override as one `error:` line (exit 2)."""
    from sif_jax.cli import parse_config_flags

    return parse_config_flags(argv, "sif_jax.evaluate")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an eval config, e.g. configs/eval.py.")
    flags.DEFINE_bool("verbose", False, "Show tracebacks and library logs.")
    app.run(main, flags_parser=_parse_flags)
