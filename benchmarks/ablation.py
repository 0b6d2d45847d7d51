"""The reward ablation over seeds, and AdaptVis vs greedy decoding, on the built-in task.

    python benchmarks/ablation.py --out=benchmarks/ablation              # configs/grpo.py:small, 3 seeds
    python benchmarks/ablation.py --smoke --out=/tmp/ablation_smoke       # tiny model, well under a minute

One SFT checkpoint (configs/grpo.py:<config_arg>,phase=sft, or `--sft_checkpoint`) is shared by every
run. From it, each arm runs GRPO for the same number of steps with each seed:

  a  GRPO-SIF           format + accuracy + IoU + depth rewards (SIFThinker)
  b  GRPO-SIF + region  (a) + the region-attention reward (SAYO's, METHODS §2)
  c  SAYO               region-attention reward + SAYO's format reward only (SAYO as released)

All arms use the built-in prompt and traces the SFT checkpoint learned. The seed sets the held-out
examples (`BuiltinSource(seed, split="test")`) and the GRPO sampling, so arms are paired by seed.
Reported per arm: held-out accuracy (overall and per question family) and TAS after GRPO, as
mean ± sample std over seeds and a 95% confidence interval for the mean (Student t, n - 1
degrees of freedom), next to chance (`sif_jax.data.chance`) and the SFT checkpoint's accuracy.

AdaptVis (Chen et al. 2025; `sif_jax.infer.adaptvis`): for each seed, the final model of arm
`--adaptvis_arm` decodes the relation and attribute questions (the families with an anchor,
hence a familiar/unfamiliar split). alpha_1, alpha_2 and beta are chosen by grid search on a
validation split (other scenes, `BuiltinSource(seed + VALIDATION_SEED, split="test")`) for the
best accuracy, as the paper does, then compared with greedy decoding on the test split,
separately for familiar and unfamiliar (held-out relation / anchor-shape pairs) questions.

Writes <out>/ablation.md (tables), <out>/ablation.png (plot) and <out>/ablation.json (every number).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python benchmarks/ablation.py` from the repository root
    sys.path.insert(0, ROOT)

from configs import grpo as grpo_config  # noqa: E402
from sif_jax.data.questions import FAMILIES  # noqa: E402

ARMS: dict[str, dict[str, float]] = {
    "a: GRPO-SIF": {"format": 1.0, "accuracy": 1.0, "iou": 1.0, "depth": 1.0, "region_attention": 0.0,
                    "sayo_format": 0.0},
    "b: GRPO-SIF + region": {"format": 1.0, "accuracy": 1.0, "iou": 1.0, "depth": 1.0, "region_attention": 1.0,
                             "sayo_format": 0.0},
    "c: SAYO (region + format)": {"format": 0.0, "accuracy": 0.0, "iou": 0.0, "depth": 0.0,
                                  "region_attention": 1.0, "sayo_format": 1.0},
}
ADAPTVIS_FAMILIES = ("relation", "attribute")
VALIDATION_SEED = 10_000


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the ablation runs. `overrides` are extra config fields ("grpo.steps" -> value)."""

    config_arg: str = "small"
    seeds: tuple[int, ...] = (0, 1, 2)
    sft_steps: int | None = None  # None: the config's
    grpo_steps: int | None = None
    eval_examples: int | None = None
    adaptvis_arm: str = "b"
    adaptvis_examples: int = 128  # relation + attribute questions per split (validation and test)
    adaptvis_seeds: int | None = None  # the AdaptVis study on the first this many seeds (None: all)
    chance_examples: int = 2000  # generated questions behind the chance rows (`data.chance`)
    alpha_low: tuple[float, ...] = (0.5, 0.8)
    alpha_high: tuple[float, ...] = (1.2, 1.5, 2.0)
    threshold: tuple[float, ...] = (0.3, 0.5, 0.7)
    overrides: tuple[tuple[str, Any], ...] = ()


SMOKE = Settings(
    config_arg="runlocal", seeds=(0, 1), sft_steps=1, grpo_steps=1, eval_examples=4, adaptvis_examples=4,
    adaptvis_seeds=1, chance_examples=100,
    alpha_low=(0.5,), alpha_high=(1.5,), threshold=(0.3, 0.6),
    overrides=(("sft.batch_size", 2), ("grpo.prompts_per_step", 2), ("grpo.micro_batch_prompts", 2),
               ("grpo.group_size", 2), ("grpo.max_new_tokens", 8), ("data.length_buckets", (160, 448))),
)


# ---------------------------------------------------------------------------- statistics


def mean_std_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """{n, mean, std (sample, ddof=1; 0 for n = 1), lo, hi}: the Student-t confidence interval
    mean ± t_{(1+level)/2, n-1} std / sqrt(n) (lo = hi = mean for n = 1). ValueError for no values."""
    from scipy import stats

    x = np.asarray([float(v) for v in values], np.float64)
    if x.size == 0:
        raise ValueError("mean_std_ci: no values")
    mean = float(x.mean())
    if x.size == 1:
        return {"n": 1, "mean": mean, "std": 0.0, "lo": mean, "hi": mean}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1)) * std / math.sqrt(x.size)
    return {"n": int(x.size), "mean": mean, "std": std, "lo": mean - half, "hi": mean + half}


def fmt_stat(s: dict[str, float] | None) -> str:
    if s is None:
        return "n/a"
    return f"{s['mean']:.3f} ± {s['std']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"


# ---------------------------------------------------------------------------- configs and runs


def _set(config: Any, key: str, value: Any) -> None:
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


def base_config(settings: Settings, phase: str = "grpo") -> Any:
    """configs/grpo.py:<config_arg>[,phase=sft] with the settings' step counts and overrides."""
    arg = settings.config_arg + (",phase=sft" if phase == "sft" else "")
    c = grpo_config.get_config(arg)
    if settings.sft_steps is not None:
        c.sft.steps = settings.sft_steps
    if settings.grpo_steps is not None and phase != "sft":
        c.grpo.steps = settings.grpo_steps
    if settings.eval_examples is not None:
        c.data.eval_examples = settings.eval_examples
    for key, value in settings.overrides:
        _set(c, key, value)
    c.checkpoint_every = 1_000_000  # the final checkpoint of each phase only
    return c


def train_sft(settings: Settings, workdir: str) -> dict:
    """The shared SFT checkpoint in `workdir` (resumed if there); returns its summary (held-out eval)."""
    from sif_jax import train

    c = base_config(settings, "sft")
    c.workdir = workdir
    return train.run(c)


def train_arm(settings: Settings, weights: dict[str, float], seed: int, sft_dir: str, workdir: str,
              before: dict | None) -> dict:
    """GRPO from `sft_dir` with reward `weights` and `seed`; returns its summary (before/after eval).
    `before` (the SFT model's eval on this seed's held-out set) is reused instead of recomputed."""
    from sif_jax import train

    c = base_config(settings)
    c.workdir, c.seed, c.init_checkpoint = workdir, seed, os.path.abspath(sft_dir)
    for name, w in weights.items():
        c.rewards[name] = w
    os.makedirs(workdir, exist_ok=True)
    summary_path = os.path.join(workdir, "summary.json")
    if before is not None and not os.path.exists(summary_path):
        with open(summary_path, "w") as f:
            json.dump({"before": before}, f)
    return train.run(c)


# ---------------------------------------------------------------------------- AdaptVis


def anchored_examples(seed: int, n: int, image_size: int) -> list[dict[str, Any]]:
    """The first `n` relation/attribute examples of `BuiltinSource(seed, split="test")`."""
    from sif_jax.data.pipeline import BuiltinSource
    from sif_jax.data.scenes import SceneConfig

    src = BuiltinSource(seed=seed, size=1_000_000, split="test",
                        scene_config=SceneConfig(height=image_size, width=image_size))
    out, i = [], 0
    while len(out) < n:
        ex = src[i]
        if ex["family"] in ADAPTVIS_FAMILIES:
            out.append(ex)
        i += 1
    return out


def _evaluate(params: Any, model: Any, config: Any, examples: list[dict[str, Any]], adaptvis: Any) -> list[dict]:
    from sif_jax.data.pipeline import PreprocessConfig, Preprocessor
    from sif_jax.data.prompts import get_prompt
    from sif_jax.data.tokenizer import BuiltinTokenizer
    from sif_jax.evaluation import eval_batches, evaluate_batches
    from sif_jax.infer.adaptvis import answer_tag_ids

    tok = BuiltinTokenizer()
    prompt = get_prompt(config.data.prompt)
    pre = Preprocessor(tok, model, PreprocessConfig(system_prompt=prompt.system, instruction=prompt.instruction,
                                                    instruction_separator=prompt.separator))
    batches = eval_batches(examples, pre, batch_size=min(16, len(examples)),
                           length_buckets=tuple(config.data.length_buckets),
                           patch_buckets=tuple(config.data.patch_buckets))
    result = evaluate_batches(params, batches, config=model, decode=tok.decode,
                              max_new_tokens=config.grpo.max_new_tokens, mass_layers=tuple(config.grpo.mass_layers),
                              eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, adaptvis=adaptvis,
                              answer_tag=answer_tag_ids(tok, "trace"))
    return result.rows


def _accuracy(rows: list[dict], split: str | None = None) -> float | None:
    kept = [r["accuracy"] for r in rows if split is None or r.get("split") == split]
    return float(np.mean(kept)) if kept else None


def adaptvis_study(settings: Settings, run_dir: str, seed: int) -> dict:
    """Grid search of (alpha_1, alpha_2, beta) on validation, then greedy vs the chosen AdaptVis on test."""
    from sif_jax.checkpoint import load_run_params
    from sif_jax.infer.adaptvis import AdaptVisConfig

    config = base_config(settings)
    model, params, _ = load_run_params(run_dir)
    size = config.data.image_size
    val = anchored_examples(seed + VALIDATION_SEED, settings.adaptvis_examples, size)
    test = anchored_examples(seed, settings.adaptvis_examples, size)
    grid = []
    for lo, hi, beta in itertools.product(settings.alpha_low, settings.alpha_high, settings.threshold):
        rows = _evaluate(params, model, config, val, AdaptVisConfig(alpha_low=lo, alpha_high=hi, threshold=beta))
        grid.append({"alpha_low": lo, "alpha_high": hi, "threshold": beta, "val_accuracy": _accuracy(rows)})
    best = max(grid, key=lambda g: (g["val_accuracy"], -abs(g["alpha_low"] - 1) - abs(g["alpha_high"] - 1)))
    chosen = AdaptVisConfig(alpha_low=best["alpha_low"], alpha_high=best["alpha_high"], threshold=best["threshold"])
    greedy = _evaluate(params, model, config, test, None)
    adapt = _evaluate(params, model, config, test, chosen)
    out = {"grid": grid, "chosen": best, "test_examples": len(test)}
    for split in ("familiar", "unfamiliar"):
        out[f"greedy_{split}"] = _accuracy(greedy, split)
        out[f"adaptvis_{split}"] = _accuracy(adapt, split)
        out[f"n_{split}"] = sum(r.get("split") == split for r in greedy)
    return out


# ---------------------------------------------------------------------------- report


def _family_acc(summary: dict, family: str) -> float | None:
    return summary.get("accuracy_by_family", {}).get(family)


def aggregate(runs: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """Per arm: accuracy / TAS / per-family accuracy after GRPO as `mean_std_ci` over seeds."""
    out: dict[str, dict[str, Any]] = {}
    for arm, summaries in runs.items():
        row: dict[str, Any] = {}
        for key in ("accuracy", "tas", "format"):
            vals = [s["after"].get(key) for s in summaries if s.get("after", {}).get(key) is not None]
            row[key] = mean_std_ci(vals) if vals else None
        for fam in FAMILIES:
            vals = [_family_acc(s["after"], fam) for s in summaries]
            vals = [v for v in vals if v is not None]
            row[fam] = mean_std_ci(vals) if vals else None
        out[arm] = row
    return out


def markdown(settings: Settings, sft: dict, chance: dict, table: dict, adaptvis: list[dict], seconds: float) -> str:
    lines = [
        f"Built-in task, configs/grpo.py:{settings.config_arg}; seeds {list(settings.seeds)}; "
        f"{sft.get('eval', {}).get('examples', '?')} held-out examples per seed; {seconds:.0f} s in all.",
        "Cells: mean ± sample std over seeds [95% t-interval of the mean].",
        "",
        "| arm | accuracy | TAS | format | " + " | ".join(FAMILIES) + " |",
        "|---|---|---|---|" + "---|" * len(FAMILIES),
        "| chance (uniform) | | | | " + " | ".join(f"{chance[f]['uniform']:.3f}" if f in chance else "n/a"
                                             for f in FAMILIES) + " |",
        "| chance (majority) | | | | " + " | ".join(f"{chance[f]['majority']:.3f}" if f in chance else "n/a"
                                              for f in FAMILIES) + " |",
    ]
    sft_eval = sft.get("eval", {})
    lines.append(f"| SFT checkpoint (seed {settings.seeds[0]}) | {sft_eval.get('accuracy', float('nan')):.3f} | "
                 f"{sft_eval.get('tas', float('nan')):.3f} | {sft_eval.get('format', float('nan')):.3f} | "
                 + " | ".join(f"{_family_acc(sft_eval, f):.3f}" if _family_acc(sft_eval, f) is not None else "n/a"
                              for f in FAMILIES) + " |")
    for arm, row in table.items():
        lines.append(f"| {arm} | {fmt_stat(row['accuracy'])} | {fmt_stat(row['tas'])} | {fmt_stat(row['format'])} | "
                     + " | ".join(fmt_stat(row[f]) for f in FAMILIES) + " |")
    if adaptvis:
        lines += ["", "AdaptVis vs greedy, relation + attribute questions, final models of arm "
                  f"{settings.adaptvis_arm} (alpha_1, alpha_2, beta by grid search on validation scenes per seed):", "",
                  "| decoding | familiar | unfamiliar |", "|---|---|---|"]
        for mode in ("greedy", "adaptvis"):
            cells = []
            for split in ("familiar", "unfamiliar"):
                vals = [a[f"{mode}_{split}"] for a in adaptvis if a[f"{mode}_{split}"] is not None]
                cells.append(fmt_stat(mean_std_ci(vals)) if vals else "n/a")
            lines.append(f"| {mode} | {cells[0]} | {cells[1]} |")
        chosen = "; ".join(f"seed {s}: a1={a['chosen']['alpha_low']}, a2={a['chosen']['alpha_high']}, "
                           f"beta={a['chosen']['threshold']} (val {a['chosen']['val_accuracy']:.3f})"
                           for s, a in zip(settings.seeds, adaptvis, strict=False))
        n = adaptvis[0]
        lines += ["", f"Chosen: {chosen}. Test questions per seed: {n['n_familiar']} familiar, "
                  f"{n['n_unfamiliar']} unfamiliar."]
    return "\n".join(lines) + "\n"


def plot(table: dict, chance: dict, adaptvis: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    keys = list(FAMILIES) + ["accuracy"]
    width = 0.8 / max(1, len(table))
    x = np.arange(len(keys))
    for k, (arm, row) in enumerate(table.items()):
        means = [row[key]["mean"] if row[key] else np.nan for key in keys]
        errs = [[(row[key]["mean"] - row[key]["lo"]) if row[key] else 0 for key in keys],
                [(row[key]["hi"] - row[key]["mean"]) if row[key] else 0 for key in keys]]
        axes[0].bar(x + k * width, means, width, yerr=errs, capsize=3, label=arm)
    for i, fam in enumerate(FAMILIES):
        if fam in chance:
            axes[0].hlines(chance[fam]["uniform"], i - 0.1, i + 0.9, colors="k", linestyles="dashed")
    axes[0].set_xticks(x + 0.4 - width / 2, keys)
    axes[0].set_ylabel("held-out accuracy (95% CI)")
    axes[0].set_title("accuracy by family (dashed: uniform chance)")
    axes[0].legend(fontsize=7)
    for k, row in enumerate(table.values()):
        if row["tas"]:
            axes[1].errorbar([k], [row["tas"]["mean"]], yerr=[[row["tas"]["mean"] - row["tas"]["lo"]],
                                                               [row["tas"]["hi"] - row["tas"]["mean"]]],
                             fmt="o", capsize=4)
    axes[1].set_xticks(range(len(table)), [a.split(":")[0] for a in table])
    axes[1].set_title("target attention score (TAS, 95% CI)")
    if adaptvis:
        for k, mode in enumerate(("greedy", "adaptvis")):
            for j, split in enumerate(("familiar", "unfamiliar")):
                vals = [a[f"{mode}_{split}"] for a in adaptvis if a[f"{mode}_{split}"] is not None]
                if vals:
                    s = mean_std_ci(vals)
                    axes[2].bar(j + 0.4 * k, s["mean"], 0.4, yerr=[[s["mean"] - s["lo"]], [s["hi"] - s["mean"]]],
                                capsize=3, color=f"C{k}", label=mode if j == 0 else None)
        axes[2].set_xticks([0.2, 1.2], ["familiar", "unfamiliar"])
        axes[2].set_title("AdaptVis vs greedy (relation + attribute)")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- main


def run_ablation(settings: Settings, out: str, sft_checkpoint: str = "") -> dict:
    """Everything above; returns the JSON it writes."""
    from sif_jax.data.chance import builtin_examples, chance_by_family
    from sif_jax.data.scenes import SceneConfig

    if settings.adaptvis_arm not in {a.split(":")[0] for a in ARMS}:
        raise ValueError(f"adaptvis_arm={settings.adaptvis_arm!r}: expected one of a, b, c")
    if not settings.seeds:
        raise ValueError("seeds: give at least one seed")
    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    sft_dir = sft_checkpoint or os.path.join(out, "sft")
    sft_summary = train_sft(settings, sft_dir) if not sft_checkpoint else {}
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    adaptvis: list[dict] = []
    sft_seed = base_config(settings, "sft").seed
    for seed in settings.seeds:
        # The SFT run's own held-out eval is the SFT model on this seed's held-out set when the seeds agree.
        before = sft_summary.get("eval") if seed == sft_seed and sft_summary.get("eval") else None
        for arm, weights in ARMS.items():
            tag = arm.split(":")[0]
            summary = train_arm(settings, weights, seed, sft_dir, os.path.join(out, f"arm_{tag}_seed{seed}"), before)
            before = summary.get("before", before)
            runs[arm].append(summary)
            print(f"[ablation] arm {tag} seed {seed}: after accuracy={summary['after'].get('accuracy'):.3f} "
                  f"tas={summary['after'].get('tas', float('nan')):.3f} ({time.time() - t0:.0f} s)", flush=True)
        if not sft_summary:
            sft_summary = {"eval": before or {}}
        n_adapt = len(settings.seeds) if settings.adaptvis_seeds is None else settings.adaptvis_seeds
        if settings.adaptvis_examples > 0 and len(adaptvis) < n_adapt:
            adaptvis.append(adaptvis_study(settings, os.path.join(out, f"arm_{settings.adaptvis_arm}_seed{seed}"),
                                           seed))
    c = base_config(settings)
    size = c.data.image_size
    chance = chance_by_family(builtin_examples(settings.chance_examples, 0, SceneConfig(height=size, width=size)))
    table = aggregate(runs)
    seconds = time.time() - t0
    md = markdown(settings, sft_summary, chance, table, adaptvis, seconds)
    with open(os.path.join(out, "ablation.md"), "w") as f:
        f.write(md)
    plot(table, chance, adaptvis, os.path.join(out, "ablation.png"))
    result = {"settings": dataclasses.asdict(settings), "sft": sft_summary, "chance": chance, "table": table,
              "runs": {arm: [{k: s.get(k) for k in ("before", "after", "grpo_reward_curve")} for s in v]
                       for arm, v in runs.items()},
              "adaptvis": adaptvis, "seconds": seconds}
    with open(os.path.join(out, "ablation.json"), "w") as f:
        json.dump(result, f, indent=1, default=float)
    print(md)
    return result


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/ablation")
    p.add_argument("--smoke", action="store_true", help="tiny model, 1 step per phase, 2 seeds: CI's check")
    p.add_argument("--config_arg", default=None, help="configs/grpo.py variant (default: small)")
    p.add_argument("--seeds", default=None, help="comma-separated, default 0,1,2")
    p.add_argument("--sft_steps", type=int, default=None)
    p.add_argument("--grpo_steps", type=int, default=None)
    p.add_argument("--eval_examples", type=int, default=None)
    p.add_argument("--adaptvis_examples", type=int, default=None, help="0: no AdaptVis study")
    p.add_argument("--adaptvis_arm", default=None, choices=("a", "b", "c"))
    p.add_argument("--alpha_low", default=None, help="grid, comma-separated")
    p.add_argument("--alpha_high", default=None)
    p.add_argument("--threshold", default=None)
    p.add_argument("--sft_checkpoint", default="", help="a run directory to start every arm from (skips SFT)")
    a = p.parse_args(argv)
    s = SMOKE if a.smoke else Settings()
    changes: dict[str, Any] = {}
    for name in ("config_arg", "sft_steps", "grpo_steps", "eval_examples", "adaptvis_examples", "adaptvis_arm"):
        if getattr(a, name) is not None:
            changes[name] = getattr(a, name)
    if a.seeds is not None:
        changes["seeds"] = tuple(int(v) for v in a.seeds.split(","))
    for name in ("alpha_low", "alpha_high", "threshold"):
        if getattr(a, name) is not None:
            changes[name] = _floats(getattr(a, name))
    return run_ablation(dataclasses.replace(s, **changes), a.out, a.sft_checkpoint)


if __name__ == "__main__":
    main()
