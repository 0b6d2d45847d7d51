"""Shared prompt work in GRPO: step time, sampler tokens/s and prompt-side FLOPs, before vs after.

    python benchmarks/grpo_sharing.py step --before-root /path/to/main/checkout   # GRPO step, side by side
    python benchmarks/grpo_sharing.py sampler                                      # tokens/s, tiny, G = 8
    python benchmarks/grpo_sharing.py vocab                                        # one top-p step by V
    python benchmarks/grpo_sharing.py flops                                        # XLA cost analysis

`step`: one GRPO step (`rl.grpo.grpo_step`) of configs/grpo.py (tiny model, 8 prompts,
G = 4, temperature 0.7, top-p 0.9, built-in 224x224 scenes), timed after one warm-up step (which
compiles), in two subprocesses run one after the other: the sif_jax under `--before-root` (e.g. a
checkout of main) and this one. Same seed, same data, same initial params.
`sampler`: `generate` with eos never drawn (every row decodes --new-tokens tokens); before = the
full-vocabulary sort for top-p and every row prefilled (candidates=0, group_size=1); after =
candidate top-p and one prefill per prompt (candidates=256, group_size=G).
`vocab`: one top-p sampling step of 32 rows at vocabularies from 1024 to Qwen's, by the stable
sort (`process_logits`, the oracle), the bisection (`nucleus_logits`) and the 256 candidates.
`flops`: `jax.jit(f).lower(...).compile().cost_analysis()["flops"]` of the sampler's prefill,
the scoring pass and the loss+grad pass, group_size 1 vs G, at completion lengths 1 (the prompt
side alone, nearly) and --new-tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

QWEN_VOCAB = 151936


def _batch(model, prompts: int, group: int, image_size: int = 224):
    from configs.grpo import get_config
    from sif_jax.data import pipeline as pl
    from sif_jax.data.scenes import SceneConfig
    from sif_jax.data.tokenizer import BuiltinTokenizer

    c = get_config()
    pre = pl.Preprocessor(BuiltinTokenizer(), model)
    source = pl.BuiltinSource(seed=0, size=prompts, scene_config=SceneConfig(height=image_size, width=image_size))
    return pl.collate([pre(source[i]) for i in range(prompts)], model, repeat=group,
                      length_buckets=tuple(c.data.length_buckets), patch_buckets=tuple(c.data.patch_buckets))


def _grpo(grpo, **fields):
    """`grpo` with those of `fields` its class has (an older sif_jax lacks the new ones)."""
    names = {f.name for f in dataclasses.fields(grpo)}
    return dataclasses.replace(grpo, **{k: v for k, v in fields.items() if k in names})


def step_worker(args) -> dict:
    """One timed GRPO step of the default config with the sif_jax on sys.path."""
    from configs.grpo import get_config
    from sif_jax.data.tokenizer import BuiltinTokenizer
    from sif_jax.model.config import get_preset
    from sif_jax.model.vlm import init_params
    from sif_jax.rl import grpo as grpo_lib
    from sif_jax.rl.rewards import RewardState
    from sif_jax.train import _make_apply, grpo_optimizer, grpo_settings, initial_state

    c = get_config()
    if args.new_tokens:
        c.grpo.max_new_tokens = args.new_tokens
    model = get_preset(c.model)
    grpo, reward_config = grpo_settings(c)
    grpo = _grpo(grpo, share_prompts=not args.unshared)
    if args.unshared:
        grpo = dataclasses.replace(grpo, sampling=_grpo(grpo.sampling, candidates=0))
    tok = BuiltinTokenizer()
    batch = _batch(model, c.grpo.micro_batch_prompts, c.grpo.group_size, c.data.image_size)
    params = init_params(model, jax.random.key(c.seed))
    optimizer = grpo_optimizer(c)
    apply = _make_apply(optimizer, None)
    times, rows = [], []
    for i in range(args.repeats + 1):
        state = initial_state(jax.tree.map(jnp.copy, params), optimizer, c.seed + 1, reference=c.grpo.beta != 0)
        t0 = time.perf_counter()
        rewards = dict(decode=tok.decode, reward_config=reward_config, reward_state=RewardState(),
                       eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
        if hasattr(grpo_lib, "grpo_step"):
            state, _, metrics, _ = grpo_lib.grpo_step(state, [batch], config=model, grpo=grpo, apply_updates=apply,
                                                      **rewards)
        else:  # a --before-root checkout from before the named GRPO stages
            rollouts, _, metrics = grpo_lib.collect_rollouts(state, [batch], config=model, grpo=grpo, **rewards)
            state, update = grpo_lib.policy_update(state, rollouts, config=model, grpo=grpo, optimizer=optimizer,
                                                   apply_updates=apply)
            metrics = {**metrics, **update}
        jax.block_until_ready(state.params)
        if i:
            times.append(time.perf_counter() - t0)
            rows.append({k: metrics[k] for k in ("reward", "completion_length", "entropy", "loss", "grad_norm",
                                                 "kl_mean", "ratio_mean", "clip_low_fraction", "clip_high_fraction")})
    return {"seconds": statistics.median(times), "sample_seconds": metrics["sample_seconds"],
            "metrics": rows[-1]}


def step(args) -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = {}
    for name, root, extra in (("before", args.before_root, []), ("after", here, [])):
        env = dict(os.environ, PYTHONPATH=f"{root}:{here}")
        cmd = [sys.executable, os.path.abspath(__file__), "step-worker", "--repeats", str(args.repeats),
               "--new-tokens", str(args.new_tokens), *extra]
        if root == here and args.before_root == here:
            cmd.append("--unshared") if name == "before" else None
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=root)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    b, a = results["before"], results["after"]
    print("| | step s | of which sampling s | reward | completion length | loss | kl |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        m = r["metrics"]
        print(f"| {name} | {r['seconds']:.2f} | {r['sample_seconds']:.2f} | {m['reward']:.4f} | "
              f"{m['completion_length']:.1f} | {m['loss']:.5f} | {m['kl_mean']:.5f} |")
    print(f"\nspeed-up: {b['seconds'] / a['seconds']:.2f}x")


def _zipf_logits(rows: int, vocab: int) -> jax.Array:
    """float32 [rows, vocab]: Zipf(1.1) log-probabilities (a peaked next-token distribution),
    randomly permuted per row."""
    ranks = np.argsort(np.random.default_rng(0).random((rows, vocab)), axis=1) + 1
    return jnp.asarray(-1.1 * np.log(ranks), jnp.float32)


def _median_ms(fn, logits: jax.Array, repeats: int) -> float:
    """Median milliseconds of jit(fn)(logits, key) over `repeats` keys, after a compiling call."""
    fn = jax.jit(fn)
    jax.block_until_ready(fn(logits, jax.random.key(0)))
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(logits, jax.random.key(i)))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def sampler(args) -> None:
    from sif_jax.infer.sampler import SamplingConfig, candidate_logits, generate, sample_token
    from sif_jax.model.config import get_preset
    from sif_jax.model.vlm import init_params, model_inputs

    model = get_preset("tiny")
    params = init_params(model, jax.random.key(0))
    print(f"| rows (G = {args.group}) | before tokens/s | after tokens/s | speed-up |")
    print("|---|---|---|---|")
    for rows in (8, 32):
        prompt = {k: jnp.asarray(v) for k, v in model_inputs(_batch(model, rows // args.group, args.group)).items()}
        rates = []
        for candidates, group in ((0, 1), (256, args.group)):
            sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.7, top_p=0.9,
                                      candidates=candidates)

            def run(sampling=sampling, group=group, prompt=prompt):
                return jax.block_until_ready(generate(params, prompt, jax.random.key(0), config=model,
                                                      sampling=sampling, eos_token_id=-1, pad_token_id=0,
                                                      group_size=group).tokens)

            run()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            rates.append(rows * args.new_tokens / statistics.median(times))
        print(f"| {rows} | {rates[0]:.0f} | {rates[1]:.0f} | {rates[1] / rates[0]:.2f}x |")
    print(f"\none sampling step at the Qwen vocabulary ({QWEN_VOCAB}), temperature 0.7, top-p 0.9, Zipf(1.1) logits "
          "(a peaked next-token distribution) randomly permuted per row:\n")
    print("| rows | full sort ms | candidates (256) ms | speed-up | rows whose nucleus fits |")
    print("|---|---|---|---|---|")
    for rows in (8, 32):
        logits = _zipf_logits(rows, QWEN_VOCAB)
        ms = []
        for candidates in (0, 256):
            sampling = SamplingConfig(temperature=0.7, top_p=0.9, candidates=candidates)
            ms.append(_median_ms(functools.partial(sample_token, sampling=sampling), logits, args.repeats))
        fits = float(np.mean(np.asarray(candidate_logits(logits, sampling)[2])))
        print(f"| {rows} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[0] / ms[1]:.1f}x | {fits:.0%} |")


def vocab(args) -> None:
    """One top-p sampling step [32 rows, V] by the three ways `sample_token` could take, side by side."""
    from sif_jax.infer.sampler import SamplingConfig, candidate_logits, nucleus_logits, process_logits

    sampling = SamplingConfig(temperature=0.7, top_p=0.9, candidates=256)
    ways = {
        "stable sort (process_logits)": lambda x, k: jax.random.categorical(k, process_logits(x, sampling)),
        "bisection (nucleus_logits)": lambda x, k: jax.random.categorical(k, nucleus_logits(x, sampling)),
        "candidates (256)": lambda x, k: jax.random.categorical(k, candidate_logits(x, sampling)[0]),
    }
    print(f"one sampling step, 32 rows, temperature 0.7, top-p 0.9, Zipf(1.1) logits permuted per row; ms "
          f"(median of {args.repeats}):\n")
    print("| vocabulary | " + " | ".join(ways) + " |")
    print("|---|" + "---|" * len(ways))
    for size in (1024, 4096, 32000, QWEN_VOCAB):
        logits = _zipf_logits(32, size)
        ms = [_median_ms(way, logits, args.repeats) for way in ways.values()]
        print(f"| {size} | " + " | ".join(f"{m:.2f}" for m in ms) + " |")


def flops(args) -> None:
    from configs.grpo import get_config
    from sif_jax.infer.groups import unique_prompts
    from sif_jax.infer.scoring import score
    from sif_jax.model.cache import prefill
    from sif_jax.model.config import get_preset
    from sif_jax.model.vlm import init_params, model_inputs
    from sif_jax.rl.grpo import loss_grads
    from sif_jax.rl.types import Rollout
    from sif_jax.train import grpo_settings

    c = get_config()
    model = get_preset(c.model)
    grpo, _ = grpo_settings(c)
    g = c.grpo.group_size
    batch = _batch(model, c.grpo.micro_batch_prompts, g, c.data.image_size)
    prompt = {k: jnp.asarray(v) for k, v in model_inputs(batch.inputs).items()}
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    rows, length = prompt["input_ids"].shape

    def cost(fn, *a):
        analysis = jax.jit(fn).lower(*a).compile().cost_analysis()
        return float(analysis["flops"])

    def prefill_fn(group):
        def f(p, x):
            x = unique_prompts(x, group, model)
            return prefill(p, model, x, length + 1, last_logits_only=True)[0]
        return f

    print(f"rows N = {rows} ({rows // g} prompts x G = {g}), prompt length L = {length}\n")
    print("| pass | completion T | unshared GFLOP | shared GFLOP | shared / unshared |")
    print("|---|---|---|---|---|")
    before, after = cost(prefill_fn(1), params, prompt), cost(prefill_fn(g), params, prompt)
    print(f"| sampler prefill | - | {before / 1e9:.2f} | {after / 1e9:.2f} | {after / before:.3f} |")
    region = jnp.asarray(batch.region_mask)
    for steps in (1, args.new_tokens):
        comp = jnp.zeros((rows, steps), jnp.int32)
        mask = jnp.ones((rows, steps), bool)
        logp = jnp.zeros((rows, steps), jnp.float32)
        adv = jnp.zeros((rows,), jnp.float32)

        def scoring(p, x, group, comp=comp, mask=mask):
            return score(p, x, comp, mask, region, config=model, mass_layers=grpo.layers(model), temperature=0.7,
                         vocab_chunk=grpo.vocab_chunk, group_size=group).logprobs

        def loss_grad(p, x, group, comp=comp, mask=mask, logp=logp, adv=adv):
            return loss_grads(p, Rollout.create(x, comp, mask, logp, logp, adv), jnp.float32(1.0), config=model,
                              grpo=dataclasses.replace(grpo, share_prompts=group > 1))[0]

        for name, fn in (("scoring (policy, masses)", scoring), ("loss + grad", loss_grad)):
            before = cost(lambda p, x, fn=fn: fn(p, x, 1), params, prompt)
            after = cost(lambda p, x, fn=fn: fn(p, x, g), params, prompt)
            print(f"| {name} | {steps} | {before / 1e9:.2f} | {after / 1e9:.2f} | {after / before:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("step", "step-worker", "sampler", "vocab", "flops"))
    parser.add_argument("--before-root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        help="checkout whose sif_jax is 'before' (default: this one with sharing off)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=0, help="0 = the config's max_new_tokens (step)")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--unshared", action="store_true")
    args = parser.parse_args()
    if args.what == "step-worker":
        print(json.dumps(step_worker(args)))
    elif args.what == "step":
        step(args)
    elif args.what == "sampler":
        args.new_tokens = args.new_tokens or 32
        args.repeats = max(args.repeats, 3)
        sampler(args)
    elif args.what == "vocab":
        args.repeats = max(args.repeats, 10)
        vocab(args)
    else:
        args.new_tokens = args.new_tokens or 320
        flops(args)


if __name__ == "__main__":
    main()
