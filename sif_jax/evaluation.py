"""Evaluation metrics: accuracy and target attention score (TAS, METHODS §2) of greedy or AdaptVis answers.

For each batch (`evaluate_batches`): generation (greedy, or AdaptVis: a confidence probe then a
decode with the chosen alpha; the confidence is read at the first answer token of the output
format, see `infer.adaptvis`), a teacher-forced scoring pass for the attention masses of the
configured layers, then the deterministic matcher (accuracy, `rl.rewards.accuracy_scores`), the
format checker, the final-area box IoU and TAS (`rl.rewards_attention.region_attention_reward`).
`EvalResult.summary` breaks the results down by question family, relation and
familiar/unfamiliar split; `format_table` prints it.

TAS and the final-area IoU need ground-truth boxes: examples without any (VSR, WhatsUp) get
`None` for both and are left out of their means (a summary without any boxed example has no
`tas` / `final_iou` key).

`eval_batches` collates raw examples into fixed-size prompt batches (the last one padded, with
`num_real`). The training library (held-out accuracy before / after GRPO) and the
`sif_jax.evaluate` command line both evaluate through this module.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from sif_jax.batch import Batch
from sif_jax.data.format import check_format
from sif_jax.infer.adaptvis import (
    AdaptVisConfig,
    generate_adaptvis,
    read_confidence,
)
from sif_jax.infer.sampler import SamplingConfig, generate
from sif_jax.infer.scoring import score
from sif_jax.model.config import ModelConfig
from sif_jax.parallel import to_host
from sif_jax.rl.rewards import RewardConfig, accuracy_scores, extract_answer
from sif_jax.rl.rewards_attention import region_attention_reward
from sif_jax.rl.rewards_geometry import hierarchical_iou
from sif_jax.rl.types import RolloutBatch

Params = Any
METRICS = ("accuracy", "tas", "format", "final_iou")
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
        confidence (mean AdaptVis confidence, `infer.adaptvis.read_confidence`), alpha_mean (AdaptVis)."""
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
    batches: Iterable[Batch],
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
        prompt = batch.inputs
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
        scores = score(params, prompt, samples.tokens, samples.completion_mask, batch.region_mask, config=config,
                       mass_layers=layers)
        tokens, mask = to_host(samples.tokens), to_host(samples.completion_mask)
        texts = [decode(tokens[r][mask[r]].tolist()) for r in range(tokens.shape[0])]
        targets = batch.targets
        rollout = RolloutBatch(
            group_size=1, prompt_ids=list(targets.prompt_ids), texts=texts, answers=list(targets.answers),
            choices=list(targets.choices), target_boxes=list(targets.target_boxes),
            depth_maps=list(targets.depth_maps), completion_mask=mask,
            entropies=to_host(scores.entropies), region_mass=to_host(scores.region_mass),
            visual_mass=to_host(scores.visual_mass), region_tokens=to_host(batch.region_tokens),
            visual_tokens=to_host(batch.visual_tokens),
        )
        accuracy = accuracy_scores(rollout, reward_config)
        _, tas = region_attention_reward(
            rollout.entropies, rollout.region_mass, rollout.visual_mass, rollout.completion_mask,
            rollout.region_tokens, rollout.visual_tokens, top_fraction=reward_config.top_fraction,
        )
        tas = np.asarray(tas)
        region_tokens = np.asarray(rollout.region_tokens)
        metadata = targets.metadata or [{}] * len(texts)
        n_real = len(texts) if batch.num_real is None else int(batch.num_real)
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


def eval_batches(source: Sequence[dict[str, Any]], preprocessor: Any, *, batch_size: int,
                 length_buckets: Sequence[int], patch_buckets: Sequence[int] | None) -> Iterator[Batch]:
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
        return batch.replace(num_real=n)

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


