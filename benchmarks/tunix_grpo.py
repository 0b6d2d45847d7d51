"""One GRPO step, sif_jax vs Tunix (`google-tunix` on PyPI), on text-only models of the same size.

    PYTHONPATH=$PWD python benchmarks/tunix_grpo.py                                  # tiny, the default shapes
    PYTHONPATH=$PWD python benchmarks/tunix_grpo.py --size small                     # hidden 384, 8 layers
    PYTHONPATH=$PWD python benchmarks/tunix_grpo.py --new-tokens 32 --repeats 1      # a quick smoke run
    PYTHONPATH=$PWD python benchmarks/tunix_grpo.py --tunix-python /path/to/venv/bin/python

Run from the repository root with this checkout on PYTHONPATH (`PYTHONPATH=$PWD`); the Tunix side
runs in its own interpreter (`--tunix-python`, default /work/tunixvenv/bin/python: a venv holding
google-tunix 0.1.7 with jax 0.10.2 and flax 0.12.8), so sif_jax never imports tunix. Both
subprocesses run with JAX_PLATFORMS=cpu unless --platform says otherwise.

One GRPO step = sample G completions per prompt, score them (reference log-probs; sif_jax also the
policy's old log-probs, entropies and attention masses), reward, group advantages, one AdamW update.
Same shapes on both sides, those of configs/grpo.py: 8 prompts x G = 4 samples, prompts of 192
random token ids (ids 7..V-1, from a fixed seed, the same on both sides; no padding), exactly
--new-tokens new tokens per sample (default 320: the EOS id is -1 on both sides, so no row stops
early), temperature 0.7, top-p 0.9 (both samplers support it), beta (KL) 0.04, clip eps 0.2,
sequence-mean-token-mean loss, clip-by-global-norm 1.0 then AdamW at the config's learning rate
(1e-4, no weight decay). The reward is the same cheap function of the decoded completion on both
sides (the fraction of even token ids), so the comparison is the machinery, not the rewards.

Models (random init, float32; sizes match, weights do not):
  tiny:  vocabulary 1024, hidden 64, intermediate 128, 4 layers, 4 heads, 2 KV heads, head_dim 16,
         tied embeddings (sif_jax `tiny`; Tunix `models.qwen2.ModelConfig` of the same sizes)
  small: vocabulary 1024, hidden 384, intermediate 1536, 8 layers, 6 heads, 2 KV heads, head_dim 64
The sif_jax model is the Qwen2.5-VL preset whose vision tower is unused for text-only prompts
(M-RoPE with equal position axes is 1-D RoPE; its frozen vision params still pass through the
optimizer, elementwise work only); the step is `sif_jax.rl.grpo.grpo_step` with
configs/grpo.py's GRPO settings. Tunix's step is `GRPOLearner.train` over an RLCluster whose actor,
reference and rollout share one 1x1 ('fsdp', 'tp') mesh, rollout_engine='vanilla', num_iterations=1
(so no old-policy pass: Tunix takes the current policy's log-probs with stop-gradient).

Token id 0 is the pad id on both sides. Tunix masks every completion token equal to the pad id
(`completion_ids != pad_id`), so a sampled id 0 (about 1 in 1024 tokens) drops out of its loss;
sif_jax keeps it. The work per step is the same.

Timing: each side runs --repeats + 1 steps; the first (compilation) is dropped and the median of the
others is reported. sif_jax: the wall time of `grpo_step` with the params waited for; Tunix: the time
between the ends of consecutive steps inside one `train` call (all its per-step work: rollout,
reference pass, rewards, the update, metric buffering), the first measured from the start of
`train`. The split: sampling (the sampler alone), rollout stage (sampling + scoring + rewards +
advantages) and update (loss, gradient, optimizer), each waited for. The two workers run one after
the other; on a shared machine run it when the cores are idle and check the per-step column for noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

# Fields of configs/grpo.py this benchmark mirrors (checked against the config by the sif_jax worker).
PROMPTS, GROUP, PROMPT_LEN = 8, 4, 192
TEMPERATURE, TOP_P, BETA, EPS, LEARNING_RATE, GRAD_CLIP = 0.7, 0.9, 0.04, 0.2, 1e-4, 1.0
FIRST_ID = 7  # prompt ids avoid the tiny tokenizer's special ids 0..6
SIZES = {  # vocab, hidden, intermediate, layers, heads, kv heads, head_dim
    "tiny": dict(vocab=1024, hidden=64, intermediate=128, layers=4, heads=4, kv_heads=2, head_dim=16),
    "small": dict(vocab=1024, hidden=384, intermediate=1536, layers=8, heads=6, kv_heads=2, head_dim=64),
}
TUNIX_PYTHON = "/work/tunixvenv/bin/python"


def prompt_ids(vocab: int, seed: int = 0) -> np.ndarray:
    """int32 [PROMPTS, PROMPT_LEN]: the prompts' token ids, uniform in [FIRST_ID, vocab)."""
    return np.random.default_rng(seed).integers(FIRST_ID, vocab, (PROMPTS, PROMPT_LEN)).astype(np.int32)


def even_fraction(text: str) -> float:
    """The reward of one completion, decoded as space-separated ids: the fraction of even ids."""
    ids = [int(t) for t in text.split()]
    return sum(i % 2 == 0 for i in ids) / max(len(ids), 1)


def _timed(fn, sink: list, wait=None):
    """`fn` that appends its wall seconds to `sink`, waiting for `wait(result)` first."""
    def wrapped(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if wait is not None:
            wait(out)
        sink.append(time.perf_counter() - t0)
        return out
    return wrapped


def sif_worker(args) -> dict:
    """Times `grpo_step` on a text-only batch (each prompt repeated G times) with the sif_jax on sys.path."""
    import jax
    import jax.numpy as jnp

    from configs.grpo import get_config
    from sif_jax.batch import Batch, ModelInputs, RewardTargets
    from sif_jax.model.config import get_preset
    from sif_jax.model.vlm import init_params, prepare_inputs
    from sif_jax.rl import grpo as grpo_lib
    from sif_jax.rl.rewards import RewardResult, RewardState
    from sif_jax.train import _make_apply, grpo_optimizer, grpo_settings, initial_state

    c = get_config()
    g = c.grpo
    mirrored = dict(micro_batch_prompts=PROMPTS, group_size=GROUP, temperature=TEMPERATURE, top_p=TOP_P, beta=BETA,
                    eps_low=EPS, eps_high=EPS, learning_rate=LEARNING_RATE, mu=1)
    stale = {k: (g[k], v) for k, v in mirrored.items() if g[k] != v}
    if stale:
        raise ValueError(f"configs/grpo.py changed; update this benchmark's constants: {stale} (config, here)")
    g.max_new_tokens = args.new_tokens
    model = get_preset(args.size)
    size = SIZES[args.size]
    t = model.text
    if (t.vocab_size, t.hidden_size, t.intermediate_size, t.num_layers, t.num_heads, t.num_kv_heads, t.head_dim) != (
            size["vocab"], size["hidden"], size["intermediate"], size["layers"], size["heads"], size["kv_heads"],
            size["head_dim"]):
        raise ValueError(f"sif_jax preset {args.size!r} no longer matches SIZES[{args.size!r}]: {t}")
    grpo, reward_config = grpo_settings(c)

    ids = np.repeat(prompt_ids(t.vocab_size), GROUP, axis=0)  # rows [p * G, (p + 1) * G) hold prompt p
    rows = ids.shape[0]
    inputs = ModelInputs.from_arrays(prepare_inputs(model, ids, np.ones_like(ids)))
    targets = RewardTargets(answers=[""] * rows, choices=[None] * rows,
                            target_boxes=[np.zeros((0, 4), np.float32)] * rows, depth_maps=[None] * rows,
                            prompt_ids=[str(r // GROUP) for r in range(rows)], metadata=[{}] * rows, group_size=GROUP)
    batch = Batch(inputs, region_mask=np.zeros(ids.shape, bool), region_tokens=np.zeros(rows, np.int32),
                  visual_tokens=np.zeros(rows, np.int32), targets=targets)

    def reward_fn(rb, state, config):
        del config
        rewards = np.asarray([even_fraction(text) for text in rb.texts], np.float32)
        return RewardResult(rewards, {"even_fraction": float(rewards.mean())}, state)

    split = {"sampling": [], "rollout": [], "update": []}
    stages = {k: getattr(grpo_lib, k) for k in ("sample_and_score", "reward_and_advantage", "update")}
    grpo_lib.sample_and_score = _timed(stages["sample_and_score"], split["rollout"], jax.block_until_ready)
    grpo_lib.reward_and_advantage = _timed(stages["reward_and_advantage"], split["rollout"])
    grpo_lib.update = _timed(stages["update"], split["update"], lambda out: jax.block_until_ready(out[0].params))
    params = init_params(model, jax.random.key(c.seed))
    optimizer = grpo_optimizer(c)
    apply = _make_apply(optimizer, None)
    times, lengths = [], []
    try:
        for _ in range(args.repeats + 1):
            state = initial_state(jax.tree.map(jnp.copy, params), optimizer, c.seed + 1, reference=True)
            jax.block_until_ready(state)
            t0 = time.perf_counter()
            state, _, metrics, _ = grpo_lib.grpo_step(
                state, [batch], config=model, grpo=grpo, apply_updates=apply, decode=lambda x: " ".join(map(str, x)),
                reward_config=reward_config, reward_state=RewardState(), eos_token_id=-1,
                pad_token_id=model.pad_token_id, reward_fn=reward_fn)
            jax.block_until_ready(state.params)
            times.append(time.perf_counter() - t0)
            split["sampling"].append(metrics["sample_seconds"])
            lengths.append(metrics["completion_length"])
    finally:
        for k, fn in stages.items():
            setattr(grpo_lib, k, fn)
    # the rollout stage is sample_and_score + reward_and_advantage: two entries per step
    split["rollout"] = [a + b for a, b in zip(split["rollout"][::2], split["rollout"][1::2], strict=True)]
    return _summary(times, split, lengths, loss=metrics["loss"], kl=metrics["kl_mean"])


def _summary(times: list[float], split: dict[str, list[float]], lengths: list[float], **last) -> dict:
    """Medians over the steps after the first (compilation), plus every step's seconds."""
    def med(xs):
        return statistics.median(xs[1:]) if len(xs) > 1 else float("nan")
    return {"seconds": med(times), **{f"{k}_seconds": med(v) for k, v in split.items()},
            "steps": [round(x, 3) for x in times], "completion_length": float(np.mean(lengths[1:] or lengths)),
            **{k: float(v) for k, v in last.items()}}


class IdTokenizer:
    """Space-separated decimal token ids <-> ids; pad 0, no BOS (bos_id 0 is falsy to Tunix's sampler),
    EOS -1 (never sampled)."""

    def encode(self, text: str, **kwargs) -> list[int]:
        del kwargs
        return [int(t) for t in text.split()]

    def decode(self, ids, **kwargs) -> str:
        del kwargs
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self) -> int:
        return 0

    def eos_id(self) -> int:
        return -1

    def pad_id(self) -> int:
        return 0


def tunix_worker(args) -> dict:
    """Times `GRPOLearner.train` over --repeats + 1 steps with the Tunix of this interpreter."""
    import jax
    import optax
    from flax import nnx
    from tunix.models.qwen2 import model as qwen2
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    size = SIZES[args.size]
    config = qwen2.ModelConfig(
        num_layers=size["layers"], vocab_size=size["vocab"], embed_dim=size["hidden"],
        hidden_dim=size["intermediate"], num_heads=size["heads"], head_dim=size["head_dim"],
        num_kv_heads=size["kv_heads"], rope_theta=1_000_000, norm_eps=1e-6, use_tied_embedding=True)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tp"))  # Auto axes
    with jax.set_mesh(mesh):
        actor = qwen2.Qwen2(config, rngs=nnx.Rngs(0))
        reference = qwen2.Qwen2(config, rngs=nnx.Rngs(0))
    steps = args.repeats + 1
    optimizer = optax.chain(optax.clip_by_global_norm(GRAD_CLIP), optax.adamw(LEARNING_RATE, weight_decay=0.0))
    role = rl_cluster_lib.Role
    cluster_config = rl_cluster_lib.ClusterConfig(
        role_to_mesh={role.ACTOR: mesh, role.REFERENCE: mesh, role.ROLLOUT: mesh},
        rollout_engine="vanilla", offload_to_cpu=False,
        training_config=rl_cluster_lib.RLTrainingConfig(
            actor_optimizer=optimizer, eval_every_n_steps=10**9, max_steps=steps, pbar_description=None),
        rollout_config=base_rollout.RolloutConfig(
            max_tokens_to_generate=args.new_tokens, max_prompt_length=PROMPT_LEN,
            kv_cache_size=PROMPT_LEN + args.new_tokens, temperature=TEMPERATURE, top_p=TOP_P, top_k=None),
    )
    cluster = rl_cluster_lib.RLCluster(actor=actor, reference=reference, tokenizer=IdTokenizer(),
                                       cluster_config=cluster_config)
    lengths: list[float] = []

    def reward(prompts, completions, **kwargs):
        del prompts, kwargs
        lengths.append(float(np.mean([len(c.split()) for c in completions])))
        return [even_fraction(c) for c in completions]

    learner = grpo_learner.GRPOLearner(
        rl_cluster=cluster, reward_fns=[reward],
        algo_config=grpo_learner.GRPOConfig(num_generations=GROUP, num_iterations=1, beta=BETA, epsilon=EPS,
                                            loss_agg_mode="sequence-mean-token-mean"))

    def wait_example(example):
        jax.block_until_ready([x for x in jax.tree.leaves(example) if isinstance(x, jax.Array)])

    def wait_actor(_):
        jax.block_until_ready(nnx.state(cluster.actor_trainer.model))

    split = {"sampling": [], "rollout": [], "update": []}
    ends: list[float] = []
    cluster.generate = _timed(cluster.generate, split["sampling"])
    learner._generate_and_compute_advantage = _timed(learner._generate_and_compute_advantage, split["rollout"],
                                                     wait_example)
    update = _timed(cluster.update_actor, split["update"], wait_actor)

    def update_and_stamp(*a, **k):
        out = update(*a, **k)
        ends.append(time.perf_counter())
        return out

    cluster.update_actor = update_and_stamp
    text = [" ".join(map(str, row)) for row in prompt_ids(size["vocab"])]
    dataset = [{"prompts": np.asarray(text)} for _ in range(steps)]
    t0 = time.perf_counter()
    learner.train(dataset)
    if len(ends) != steps:
        raise RuntimeError(f"Tunix ran {len(ends)} updates; expected {steps}")
    times = np.diff([t0, *ends]).tolist()
    return _summary(times, split, lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="compare", choices=("compare", "sif-worker", "tunix-worker"))
    parser.add_argument("--size", default="tiny", choices=tuple(SIZES))
    parser.add_argument("--new-tokens", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after the warm-up step")
    parser.add_argument("--tunix-python", default=TUNIX_PYTHON, help="an interpreter with google-tunix installed")
    parser.add_argument("--platform", default="cpu", help="JAX_PLATFORMS of both workers")
    args = parser.parse_args()
    if args.repeats < 1 or args.new_tokens < 1:
        parser.error("--repeats and --new-tokens must be >= 1")
    if args.what == "sif-worker":
        print(json.dumps(sif_worker(args)))
        return
    if args.what == "tunix-worker":
        print(json.dumps(tunix_worker(args)))
        return
    if not os.path.exists(args.tunix_python):
        parser.error(f"--tunix-python {args.tunix_python!r} does not exist")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS=args.platform)
    flags = ["--size", args.size, "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
    results = {}
    for name, python, extra_env in (("sif_jax", sys.executable, {"PYTHONPATH": root}),
                                    ("Tunix 0.1.7", args.tunix_python, {"PYTHONPATH": ""})):
        cmd = [python, os.path.abspath(__file__), "sif-worker" if name == "sif_jax" else "tunix-worker", *flags]
        out = subprocess.run(cmd, env={**env, **extra_env}, capture_output=True, text=True, cwd=root)
        if out.returncode:
            sys.stderr.write(out.stderr[-6000:])
            raise SystemExit(f"{name} worker failed (exit {out.returncode}): {' '.join(cmd)}")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.size} ({PROMPTS} prompts x G = {GROUP}, prompt {PROMPT_LEN} tokens, {args.new_tokens} new tokens, "
          f"median of {args.repeats} steps after a warm-up, JAX_PLATFORMS={args.platform}):\n")
    print("| | step s | sampling s | rollout stage s | update s | completion length | all steps s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.2f} | {r['sampling_seconds']:.2f} | {r['rollout_seconds']:.2f} | "
              f"{r['update_seconds']:.2f} | {r['completion_length']:.1f} | {', '.join(map(str, r['steps']))} |")
    s, t = results["sif_jax"], results["Tunix 0.1.7"]
    print(f"\nTunix / sif_jax step time: {t['seconds'] / s['seconds']:.2f}x")


if __name__ == "__main__":
    main()
