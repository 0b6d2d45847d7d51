"""Evaluation: accuracy and target attention score (TAS, METHODS §2) of greedy or AdaptVis answers.

    python -m sif_jax.evaluate --config=configs/eval.py --config.checkpoint=workdir/grpo \
        [--config.decoding=adaptvis] [--config.data.source=vsr:<file.jsonl>:<image_dir>] [--verbose]

For each batch: generation (greedy, or AdaptVis: a confidence probe then a decode with the chosen
alpha; the confidence is read at the first answer token of the output format, see `rl.adaptvis`),
a teacher-forced scoring pass for the attention masses of the configured layers, then the
deterministic matcher (accuracy), the format checker, the final-area box IoU and TAS. Results are
broken down by question family, relation and familiar/unfamiliar split.

TAS and the final-area IoU need ground-truth boxes: examples without any (VSR, WhatsUp) get
`None` for both and are left out of their means (a summary without any boxed example has no
`tas` / `final_iou` key; the CLI report writes them as null).

The command line reads the built-in task (test split) or local GQA / VSR / WhatsUp / SIF-50K files
through `sif_jax.data.records`, turns the records into pipeline raw examples, and runs them
through `pipeline.Preprocessor` and `batching.collate` (configs/eval.py lists the fields). An
invalid record is skipped and counted (`summary.skipped`, `skipped_records`: count, first ids and
problems) unless `data.strict_records`. It prints a table and writes a JSON report
`{"summary", "skipped_records", "config", "checkpoint", "rows"}`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from sif_jax.data.format import check_format
from sif_jax.model.config import ModelConfig
from sif_jax.model.family import family_of
from sif_jax.parallel import to_host
from sif_jax.rl.adaptvis import (
    AdaptVisConfig,
    answer_tag_ids,
    generate_adaptvis,
    output_format_for_instruction,
    read_confidence,
)
from sif_jax.rl.rewards import RewardConfig, accuracy_scores, extract_answer
from sif_jax.rl.rewards_attention import region_attention_reward
from sif_jax.rl.rewards_geometry import hierarchical_iou
from sif_jax.rl.sampler import SamplingConfig, generate
from sif_jax.rl.scoring import score
from sif_jax.rl.types import RolloutBatch

Params = Any
METRICS = ("accuracy", "tas", "format", "final_iou")
DECODINGS = ("greedy", "adaptvis")  # config.decoding
GROUPS = ("family", "relation", "split")


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


@dataclasses.dataclass
class EvalResult:
    """Per-example rows and their aggregate."""

    rows: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        """examples; accuracy, tas, format, final_iou (means; tas / final_iou over the examples
        with target boxes, absent when there are none); accuracy_by_{family,relation,split};
        groups: {family|relation|split: {name: {examples, accuracy, tas, format, final_iou}}};
        confidence (mean AdaptVis confidence, `rl.adaptvis.read_confidence`), alpha_mean (AdaptVis)."""
        if not self.rows:
            return {"examples": 0}
        out: dict[str, Any] = {"examples": len(self.rows)}
        for key in METRICS:
            value = _mean(r.get(key) for r in self.rows)
            if value is not None:
                out[key] = value
        out["examples_with_boxes"] = sum(r.get("tas") is not None for r in self.rows)
        if any("confidence" in r for r in self.rows):
            out["confidence"] = _mean(r.get("confidence") for r in self.rows)
        if any(r.get("alpha") is not None for r in self.rows):
            out["alpha_mean"] = _mean(r.get("alpha") for r in self.rows)
        groups: dict[str, dict[str, dict[str, Any]]] = {}
        for group in GROUPS:
            buckets: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in self.rows:
                if r.get(group) not in (None, ""):
                    buckets[str(r[group])].append(r)
            out[f"accuracy_by_{group}"] = {k: float(np.mean([r["accuracy"] for r in v]))
                                           for k, v in sorted(buckets.items())}
            groups[group] = {k: {"examples": len(v), **{m: _mean(r.get(m) for r in v) for m in METRICS}}
                             for k, v in sorted(buckets.items())}
        out["groups"] = groups
        return out


def evaluate_batches(
    params: Params,
    batches: Iterable[dict[str, Any]],
    *,
    config: ModelConfig,
    decode: Callable[[Sequence[int]], str],
    max_new_tokens: int,
    mass_layers: Sequence[int],
    eos_token_id: int,
    pad_token_id: int,
    reward_config: RewardConfig | None = None,
    visual_scale: jax.Array | None = None,
    adaptvis: AdaptVisConfig | None = None,
    answer_tag: tuple[int, ...] = (),
) -> EvalResult:
    """Greedy (or, with `adaptvis`, AdaptVis) answers for every batch (collated with repeat=1)
    and their scores. A batch may carry `num_real` (int): only its first rows are reported (the
    others pad the batch to a fixed shape). `answer_tag` (`adaptvis.answer_tag_ids`; () = plain
    answers) says where the confidence is read; each row's "confidence" is that of the alpha = 1
    decode (AdaptVis: its probe), "confidence_step" the index of the token it was read at."""
    reward_config = reward_config or RewardConfig()
    layers = tuple(sorted({i % config.text.num_layers for i in mass_layers}))
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    rows: list[dict[str, Any]] = []
    for batch in batches:
        prompt = family_of(config).model_inputs(batch)
        alpha = None
        if adaptvis is not None:
            result = generate_adaptvis(params, prompt, jax.random.key(0), config=config, sampling=sampling,
                                       adaptvis=adaptvis, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                       answer_tag=answer_tag)
            samples, alpha = result.samples, to_host(result.alpha)
            confidence, confidence_step = to_host(result.confidence), to_host(result.confidence_step)
        else:
            samples = generate(params, prompt, jax.random.key(0), config=config, sampling=sampling,
                               eos_token_id=eos_token_id, pad_token_id=pad_token_id, visual_scale=visual_scale)
            confidence, confidence_step, _ = (to_host(x) for x in read_confidence(samples, answer_tag))
        scores = score(params, prompt, samples.tokens, samples.completion_mask, batch["region_mask"], config=config,
                       mass_layers=layers)
        tokens, mask = to_host(samples.tokens), to_host(samples.completion_mask)
        texts = [decode(tokens[r][mask[r]].tolist()) for r in range(tokens.shape[0])]
        rollout = RolloutBatch(
            group_size=1, prompt_ids=list(batch["prompt_ids"]), texts=texts, answers=list(batch["answers"]),
            choices=list(batch["choices"]), target_boxes=list(batch["target_boxes"]),
            depth_maps=list(batch["depth_maps"]), completion_mask=mask,
            entropies=to_host(scores.entropies), region_mass=to_host(scores.region_mass),
            visual_mass=to_host(scores.visual_mass), region_tokens=to_host(batch["region_tokens"]),
            visual_tokens=to_host(batch["visual_tokens"]),
        )
        accuracy = accuracy_scores(rollout, reward_config)
        _, tas = region_attention_reward(
            rollout.entropies, rollout.region_mass, rollout.visual_mass, rollout.completion_mask,
            rollout.region_tokens, rollout.visual_tokens, top_fraction=reward_config.top_fraction,
        )
        tas = np.asarray(tas)
        region_tokens = np.asarray(rollout.region_tokens)
        metadata = batch.get("metadata") or [{}] * len(texts)
        n_real = int(batch.get("num_real", len(texts)))
        for r, text in enumerate(texts[:n_real]):
            parsed = check_format(text)
            has_boxes = len(rollout.target_boxes[r]) > 0
            final_iou: float | None = None
            if has_boxes:
                final_iou = 0.0
                if parsed.ok and parsed.areas:
                    final_iou = float(hierarchical_iou([b for b, _ in parsed.areas[-1]], rollout.target_boxes[r]))
            rows.append({
                "id": metadata[r].get("id", rollout.prompt_ids[r]),
                "prompt_id": rollout.prompt_ids[r], "answer": rollout.answers[r], "output": text,
                "prediction": extract_answer(text, parsed, reward_config.accuracy_requires_format),
                "accuracy": float(accuracy[r]),
                "tas": float(tas[r]) if region_tokens[r] > 0 else None,  # boxes or a focus area
                "format": float(parsed.ok), "format_reason": parsed.reason,
                "final_iou": final_iou, "confidence": float(confidence[r]),
                "confidence_step": int(confidence_step[r]),
                "completion_tokens": int(mask[r].sum()),
                **({"alpha": float(alpha[r])} if alpha is not None else {}),
                **{k: metadata[r].get(k) for k in GROUPS},
            })
    return EvalResult(rows)


# ---------------------------------------------------------------------------- data sources


_WHATSUP_RELATIONS = ("left of", "right of", "in front of", "behind", "on top of", "under", "above", "below", "on")


def whatsup_relation(caption: str) -> str | None:
    """The spatial relation a WhatsUp caption states ('A mug to the left of a plate' -> 'left of')."""
    words = f" {str(caption).lower()} "
    for rel in _WHATSUP_RELATIONS:
        if f" {rel} " in words:
            return rel
    return None


def record_to_example(record: Any, index: int) -> dict[str, Any]:
    """A `records.SIFRecord` -> a pipeline raw example (`data.sources.record_to_example`, no trace)."""
    from sif_jax.data.sources import record_to_example as to_example

    return {**to_example(record, index), "trace": ""}


def read_records(source: str, whatsup_seed: int = 0) -> list[Any]:
    """The records of a `config.data.source` string naming local files (`data.sources.read_records`)."""
    from sif_jax.data.sources import read_records as read

    return read(source, whatsup_seed=whatsup_seed, progress=True)


def make_source(data: Any) -> Sequence[dict[str, Any]]:
    """The raw-example source of an eval config's `data` block, through the source registry
    (`data.sources`: builtin, tfds, sif_json, gqa, sayo, vsr, whatsup).

    Records with a problem (`records.record_errors`, e.g. a GQA box that clips to zero area or a
    missing image) are skipped and counted in the source's `skipped` (the report's
    `skipped_records` and the summary's `skipped`); `data.strict_records` makes any of them an
    error instead. No usable record at all is an error.
    """
    from sif_jax.data import pipeline, sources
    from sif_jax.data.scenes import SceneConfig

    kind, _ = sources.check_spec(data.source)
    if kind == "builtin":
        if data.num_examples < 1:
            raise ValueError(f"config.data.num_examples={data.num_examples}: the built-in task needs >= 1")
        scene = SceneConfig(height=data.image_size, width=data.image_size)
        return pipeline.BuiltinSource(seed=data.seed, size=data.num_examples, split="test", scene_config=scene)
    if kind == "tfds":
        return sources.tfds_source(data.source, "test")
    return sources.open_records(data.source, strict=bool(data.get("strict_records", False)),
                                whatsup_seed=data.whatsup_seed, limit=data.num_examples, progress=True)


def eval_batches(source: Sequence[dict[str, Any]], preprocessor: Any, *, batch_size: int,
                 length_buckets: Sequence[int], patch_buckets: Sequence[int] | None) -> Iterator[dict[str, Any]]:
    """Collated prompt batches of exactly `batch_size` rows (the last one padded by repeating its
    last example; `num_real` says how many rows count). A prompt longer than the largest length
    bucket is an error naming the example."""
    from sif_jax.data.batching import collate

    longest = max(length_buckets)
    pending: list[dict[str, Any]] = []

    def flush() -> dict[str, Any]:
        n = len(pending)
        rows = pending + [pending[-1]] * (batch_size - n)
        batch = collate(rows, preprocessor.config, length_buckets=tuple(length_buckets),
                        patch_buckets=None if not patch_buckets else tuple(patch_buckets))
        batch["num_real"] = n
        return batch

    for i in range(len(source)):
        example = preprocessor(source[i])
        n = len(example["prompt_tokens"])
        if n > longest:
            raise ValueError(f"example {example['prompt_id']!r}: the prompt is {n} tokens, longer than the largest "
                             f"length bucket {longest} (config.data.length_buckets); shorten the question or add a "
                             "larger bucket")
        pending.append(example)
        if len(pending) == batch_size:
            yield flush()
            pending = []
    if pending:
        yield flush()


# ---------------------------------------------------------------------------- report


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table: overall, then one block per grouping."""
    head = f"{'':28s} {'n':>5s} {'accuracy':>9s} {'TAS':>7s} {'format':>7s} {'IoU':>7s}"
    lines = [head, "-" * len(head),
             f"{'overall':28s} {summary.get('examples', 0):5d} {_fmt(summary.get('accuracy')):>9s} "
             f"{_fmt(summary.get('tas')):>7s} {_fmt(summary.get('format')):>7s} {_fmt(summary.get('final_iou')):>7s}"]
    for group, buckets in (summary.get("groups") or {}).items():
        if not buckets:
            continue
        lines.append(f"by {group}:")
        for name, m in buckets.items():
            lines.append(f"  {name[:26]:26s} {m['examples']:5d} {_fmt(m['accuracy']):>9s} {_fmt(m['tas']):>7s} "
                         f"{_fmt(m['format']):>7s} {_fmt(m['final_iou']):>7s}")
    return "\n".join(lines)


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
    from sif_jax.cli import CLIError, instruction_text, load_model
    from sif_jax.data.pipeline import PreprocessConfig, Preprocessor
    from sif_jax.data.prompts import get_prompt

    validate_eval_config(c)
    if c.output:  # fail before the evaluation, not after it
        os.makedirs(os.path.dirname(os.path.abspath(c.output)), exist_ok=True)
        if os.path.isdir(c.output):
            raise CLIError(f"config.output={c.output!r} is a directory; give a file name")
    source = make_source(c.data)  # data errors before the (possibly slow) checkpoint load
    skipped = getattr(source, "skipped", None)
    if skipped is not None and skipped.count:
        print(f"warning: {skipped.summary('records')}", file=sys.stderr, flush=True)
    loaded = load_model(c.checkpoint, model=c.model, tokenizer=c.tokenizer, attention_backend=c.attention_backend,
                        dtype=c.dtype, flag_prefix="--config.")
    config, tok = loaded.config, loaded.tokenizer
    for layer in c.mass_layers:
        if not -config.text.num_layers <= layer < config.text.num_layers:
            raise CLIError(f"config.mass_layers={tuple(c.mass_layers)}: layer {layer} is outside the model's "
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
                       "step": loaded.info.step, "model": _describe(config)},
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


def _describe(config: ModelConfig) -> str:
    from sif_jax.cli import describe_config

    return describe_config(config)


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
