"""Where a trace-trained model fails: teacher-forced accuracy per trace segment, per SFT checkpoint.

    python benchmarks/sft_probe.py --run=workdir/grpo_small --examples=128            # every saved SFT step
    python benchmarks/sft_probe.py --run=workdir/grpo_small --steps=300,600 --out=/tmp/probe.json

Feeds held-out built-in examples (`BuiltinSource(seed, split="test")`, the scenes the run's held-out
accuracy uses) with their ground-truth trace to the model and reads, at every trace token, whether
the model's most likely next token is the true one (teacher forcing: each prediction sees the true
prefix). The tokens are grouped by what they say, from the trace text:

  goal        "I need to compare the red cube and the blue sphere." (first step): a copy of what the
              question asks; wrong here = the question is not read
  box         the bbox_2d numbers: localisation (needs the image and the question)
  depth       the depth numbers
  text        the other step texts (names of the objects inside an area, templates)
  conclusion  the last step's text: the decisive names, relation and depth order
  answer      the tokens inside <answer>...</answer>, given the true conclusion before them: a copy
              of a decision already written in the conclusion
  syntax      tags, JSON punctuation and eos

`--other_image`: each example is fed the image of the next held-out example instead of its own
(same size, so the same number of visual tokens): box accuracy that does not drop means the model
writes boxes without looking; conclusion/answer accuracy that does not drop, that it decides without
looking.

`answer exact` is the share of examples whose answer tokens are all predicted (per family). Greedy
generation compounds errors; this probe separates them: a model that copies the conclusion into the
answer (answer near 1) but cannot write the conclusion fails at the decision, not at the format.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python benchmarks/sft_probe.py` from the repository root
    sys.path.insert(0, ROOT)

SEGMENTS = ("goal", "box", "depth", "text", "conclusion", "answer", "syntax")


def segment_labels(trace: str, pieces: Sequence[str]) -> list[str]:
    """The segment of each token of `trace` (`pieces`: the tokens' strings, concatenating to `trace`): the
    segment of the token's last character (" I" of " I need" is the goal's)."""
    if "".join(pieces) != trace:
        raise ValueError("segment_labels: the token strings do not spell the trace")
    char = np.full(len(trace), "syntax", dtype=object)
    texts = [m.span(1) for m in re.finditer(r"<text>(.*?)</text>", trace)]
    for a, b in texts:
        char[a:b] = "text"
    if texts:
        a, b = texts[-1]
        char[a:b] = "conclusion"
        first = trace[texts[0][0]:texts[0][1]]
        goal = first.find("I need")
        if goal >= 0 and len(texts) > 1:
            char[texts[0][0] + goal:texts[0][1]] = "goal"
    for m in re.finditer(r'"bbox_2d":\[([^\]]*)\]', trace):
        for n in re.finditer(r"[0-9.]+", m.group(1)):
            char[m.start(1) + n.start():m.start(1) + n.end()] = "box"
    for m in re.finditer(r'"depth":([0-9.]+)', trace):
        char[m.start(1):m.end(1)] = "depth"
    m = list(re.finditer(r"<answer>(.*?)</answer>", trace))
    if m:
        char[m[-1].start(1):m[-1].end(1)] = "answer"
    labels, pos = [], 0
    for p in pieces:
        labels.append(str(char[pos + len(p) - 1]) if p else "syntax")
        pos += len(p)
    return labels


def trace_labels(examples: Sequence[dict[str, Any]], processed: Sequence[dict[str, Any]],
                 tokenizer: Any, captions: bool = False) -> list[list[str]]:
    """Per example, the segment of each target token and of the eos after them. `captions`: every
    step text is an object's name, labelled `text` (a caption has no goal or conclusion)."""
    out = []
    for ex, pex in zip(examples, processed, strict=True):
        pieces = [tokenizer.decode([int(t)], skip_special_tokens=False) for t in pex["target_tokens"]]
        labels = [*segment_labels(ex["trace"], pieces), "syntax"]  # eos
        out.append([("text" if s in ("goal", "conclusion") else s) for s in labels] if captions else labels)
    return out


def probe_examples(source: Any, n: int, captions: bool = False) -> list[dict[str, Any]]:
    """The first `n` examples of a `BuiltinSource`, or (`captions`) the grounding captions of the same
    scenes (`sif_jax.data.captions`)."""
    if not captions:
        return [source[i] for i in range(n)]
    from sif_jax.data.captions import caption_example
    from sif_jax.data.scenes import generate_scene

    return [caption_example(generate_scene(source.scene_seed(i), source.scene_config), i) for i in range(n)]


def make_forward(config: Any) -> Any:
    """jit(params, inputs) -> (argmax int [B, L], log-probs float32 [B, L, vocab])."""
    import jax
    import jax.numpy as jnp

    from sif_jax.model.family import family_of

    family = family_of(config)
    module = family.module(config)

    @jax.jit
    def forward(p, inputs):
        _, aux = module.apply({"params": p}, **family.model_inputs(inputs), return_hidden=True)
        logits = aux["hidden"].astype(jnp.float32) @ family.lm_head_kernel(p, config).astype(jnp.float32)
        return jnp.argmax(logits, -1), jax.nn.log_softmax(logits, -1)

    return forward


def probe(forward: Any, params: Any, config: Any, examples: Sequence[dict[str, Any]],
          processed: Sequence[dict[str, Any]], labels: Sequence[list[str]], batch_size: int = 8) -> dict[str, Any]:
    """Teacher-forced next-token accuracy and NLL per segment, overall and per family (`forward`:
    `make_forward(config)`; `labels`: `trace_labels(examples, processed, tokenizer)`)."""
    from sif_jax.data.batching import collate_sft

    hits: dict[tuple[str, str], list[float]] = defaultdict(list)
    nll: dict[tuple[str, str], list[float]] = defaultdict(list)
    exact: dict[str, list[float]] = defaultdict(list)
    for start in range(0, len(processed), batch_size):
        chunk = list(processed[start:start + batch_size])
        raw = list(examples[start:start + batch_size])
        segs = labels[start:start + batch_size]
        batch = collate_sft(chunk, config, length_buckets=(192, 512, 640, 768), patch_buckets=(256,))
        pred, logp = forward(params, batch.inputs.arrays())
        pred, logp = np.asarray(pred), np.asarray(logp)
        ids = np.asarray(batch.inputs.input_ids)
        length = ids.shape[1]
        for r, (ex, row_labels) in enumerate(zip(raw, segs, strict=True)):
            first = length - len(row_labels)  # the trace's first column (left padding)
            ok_answer = []
            for j, seg in enumerate(row_labels):
                col = first + j
                hit = float(pred[r, col - 1] == ids[r, col])
                lp = float(-logp[r, col - 1, ids[r, col]])
                for fam in ("all", ex["family"]):
                    hits[(fam, seg)].append(hit)
                    nll[(fam, seg)].append(lp)
                if seg == "answer":
                    ok_answer.append(hit)
            for fam in ("all", ex["family"]):
                exact[fam].append(float(all(ok_answer)) if ok_answer else 0.0)
    families = ["all"] + sorted({ex["family"] for ex in examples})
    return {
        fam: {
            "examples": len(exact[fam]),
            "answer_exact": float(np.mean(exact[fam])),
            **{f"acc_{s}": float(np.mean(hits[(fam, s)])) for s in SEGMENTS if hits[(fam, s)]},
            **{f"nll_{s}": float(np.mean(nll[(fam, s)])) for s in SEGMENTS if nll[(fam, s)]},
        }
        for fam in families
    }


def sft_steps(run: str) -> list[int]:
    sft = os.path.join(run, "sft")
    return sorted(int(d) for d in os.listdir(sft) if d.isdigit())


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a training run directory (its sft/<step> checkpoints)")
    ap.add_argument("--steps", default="", help="comma-separated SFT steps; default: every saved one")
    ap.add_argument("--examples", type=int, default=128, help="held-out examples")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (its held-out scenes)")
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--other_image", action="store_true",
                    help="also probe with each example given the next example's image (a counterfactual)")
    ap.add_argument("--captions", action="store_true",
                    help="probe grounding captions of the held-out scenes (sif_jax/data/captions.py) instead of "
                         "their questions' traces: `text` is then the objects' names, `answer` their number")
    ap.add_argument("--out", default="", help="write every number here (JSON)")
    args = ap.parse_args(argv)

    from sif_jax.checkpoint import _restore_state_items
    from sif_jax.checkpoint_loading import read_checkpoint_info
    from sif_jax.data.pipeline import BuiltinSource, PreprocessConfig, Preprocessor
    from sif_jax.data.prompts import get_prompt
    from sif_jax.data.scenes import SceneConfig
    from sif_jax.data.tokenizer import BuiltinTokenizer
    from sif_jax.model.layout import to_layout

    steps = [int(s) for s in args.steps.split(",") if s] or sft_steps(args.run)
    info = read_checkpoint_info(args.run)
    tokenizer = BuiltinTokenizer()
    source = BuiltinSource(seed=args.seed, size=args.examples, split="test",
                           scene_config=SceneConfig(height=args.image_size, width=args.image_size))
    pre = Preprocessor(tokenizer, info.config, PreprocessConfig.from_prompt(get_prompt("builtin")))
    examples = probe_examples(source, args.examples, captions=args.captions)
    processed = [pre(ex) for ex in examples]
    image_keys = ("pixel_values", "image_grid_thw", "image_patches")
    swapped = [{**p, **{k: processed[(i + 1) % len(processed)][k] for k in image_keys}}
               for i, p in enumerate(processed)]
    labels = trace_labels(examples, processed, tokenizer, captions=args.captions)
    forward = make_forward(info.config)
    results: dict[Any, Any] = {}
    for step in steps:
        saved = _restore_state_items(os.path.join(os.path.abspath(args.run), "sft"), step, None, lora_phase=False)
        params = to_layout(saved["params"], info.config)
        runs = {"own image": processed, **({"other image": swapped} if args.other_image else {})}
        results[step] = {name: probe(forward, params, info.config, examples, data, labels)
                         for name, data in runs.items()}
        for name, res in results[step].items():
            row = res["all"]
            print(f"step {step} ({name}): " + "  ".join(f"{s} {row.get('acc_' + s, float('nan')):.3f}"
                                                      for s in SEGMENTS)
                  + f"  answer_exact {row['answer_exact']:.3f}", flush=True)
            for fam, r in res.items():
                if fam != "all":
                    print(f"    {fam:9s} n={r['examples']:3d} answer_exact {r['answer_exact']:.3f} goal "
                          f"{r.get('acc_goal', float('nan')):.3f} box {r.get('acc_box', float('nan')):.3f} "
                          f"conclusion {r.get('acc_conclusion', float('nan')):.3f}  nll: box "
                          f"{r.get('nll_box', float('nan')):.3f} "
                          f"conclusion {r.get('nll_conclusion', float('nan')):.3f}",
                          flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"run": args.run, "examples": args.examples, "seed": args.seed, "captions": args.captions,
                       "steps": results}, f, indent=1)


if __name__ == "__main__":
    main()
