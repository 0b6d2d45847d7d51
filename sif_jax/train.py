"""`python -m sif_jax.train --config=configs/grpo.py`: SFT warm-up, then GRPO-SIF + SAYO.

Runs sharded over every device (a ('data', 'fsdp', 'tensor') mesh from the config), saves orbax
checkpoints every `checkpoint_every` steps and on SIGTERM, and resumes from the newest one with
the same data order. Metrics go to a tqdm bar, a log line every `log_every` steps and
`<workdir>/metrics.jsonl`; held-out accuracy and TAS before and after GRPO to `summary.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags
from tqdm import tqdm

from sif_jax import lora as lora_lib
from sif_jax import parallel
from sif_jax.checkpoint import (
    Checkpointer,
    PreemptionGuard,
    abstract_with_shardings,
    load_run_params,
    run_checkpoint_meta,
)
from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.evaluate import evaluate_batches
from sif_jax.lora import LoraConfig
from sif_jax.lora_peft import load_peft_adapter
from sif_jax.model.config import ModelConfig
from sif_jax.model.family import family_of, get_preset
from sif_jax.model.layout import is_stacked, to_layout
from sif_jax.rl.adaptvis import answer_tag_ids
from sif_jax.rl.grpo import GRPOConfig, TrainState, collect_rollouts, make_optimizer, policy_update
from sif_jax.rl.rewards import REWARD_NAMES, RewardConfig, RewardState
from sif_jax.rl.sampler import SamplingConfig
from sif_jax.run_config import validate_config
from sif_jax.sft import sft_grads
from sif_jax.train_data import TrainData

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.")
_VALIDATE_ONLY = flags.DEFINE_bool("validate_only", False, "Check the config and its overrides (not that paths "
                                   "exist), print 'config ok' and exit: launch/tpu_vm.sh runs this before a VM.")
FLAGS = flags.FLAGS

# Leading (batch) axis of each array of a collated batch; others are replicated.
BATCH_AXES = {"input_ids": 0, "attention_mask": 0, "positions": 1, "region_mask": 0, "image_token_index": 0,
              "pixel_values": 0, "patch_positions": 0, "window_segments": 0, "frame_segments": 0,
              "pos_indices": 0, "pos_weights": 0, "region_tokens": 0, "visual_tokens": 0, "loss_mask": 0}


class MetricsWriter:
    """One JSON object per line in <workdir>/<name>.jsonl (process 0 only).

    Local files are appended to; object stores (gs://) cannot append, so there the file is
    rewritten with all rows each time (rows are small).
    """

    def __init__(self, workdir: str, name: str = "metrics") -> None:
        self.path = epath.Path(workdir) / f"{name}.jsonl"
        self.enabled = jax.process_index() == 0
        self.remote = "://" in str(workdir)
        self.lines = self.path.read_text().splitlines() if self.remote and self.path.exists() else []

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(row, sort_keys=True)
        if self.remote:
            self.lines.append(line)
            self.path.write_text("\n".join(self.lines) + "\n")
        else:
            with open(self.path, "a") as f:
                f.write(line + "\n")


def init_params(model: Any, rng: jax.Array) -> Any:
    return family_of(model).init_params(model, rng)


def param_logical_axes(model: Any) -> Any:
    return family_of(model).param_logical_axes(model)


def abstract_boxed_params(model: Any) -> Any:
    return family_of(model).abstract_boxed_params(model)


def _model_config(config: ml_collections.ConfigDict, base: ModelConfig) -> ModelConfig:
    return base.replace(attention_backend=config.attention_backend or None,
                        scan_layers=bool(config.get("scan_layers", False)),
                        remat_policy=config.get("remat_policy", "none"))


def _place(batch: dict[str, Any], mesh) -> dict[str, Any]:
    return parallel.shard_batch(batch, mesh, BATCH_AXES)


@dataclasses.dataclass
class Run:
    """What every phase shares: config, model, mesh, data, shardings."""

    config: ml_collections.ConfigDict
    model: ModelConfig
    mesh: Any
    data: TrainData | None  # None when only planning (sif_jax.plan)
    param_shardings: Any
    workdir: str


def _setup(config: ml_collections.ConfigDict) -> tuple[Run, Any]:
    d = config.distributed
    parallel.initialize_distributed(d.coordinator_address or None, d.num_processes or None,
                                    d.process_id if d.process_id >= 0 else None)
    data = TrainData(config)
    params = None
    from_run = False
    if not config.init_checkpoint:
        base = get_preset(config.model)
    else:  # HF directory, `sif_jax.export` directory or a run directory (e.g. workdir/sft)
        from sif_jax.cli import CLIError, load_params, load_tokenizer, read_checkpoint_info

        try:
            info = read_checkpoint_info(config.init_checkpoint)
            if not config.tokenizer:  # the tokenizer the checkpoint names or holds
                data.tokenizer = load_tokenizer("", info, flag="--config.tokenizer")
        except CLIError as e:
            raise ValueError(f"config.init_checkpoint={config.init_checkpoint!r}: {e}") from None
        if info.kind == "hf" and _is_hf_dir(config.init_checkpoint):
            base, params = load_hf_checkpoint(config.init_checkpoint)
        elif info.kind == "params":  # python -m sif_jax.export --format=orbax
            base, params = info.config, load_params(info)
        else:  # a run directory, restored below onto this mesh
            base, _, _, _ = run_checkpoint_meta(config.init_checkpoint)
            from_run = True
    if config.init_checkpoint:
        preset = get_preset(config.model)
        if type(base) is not type(preset) or (base.text, base.vision) != (preset.text, preset.vision):
            depth = getattr(base.vision, "depth", getattr(base.vision, "num_layers", None))
            raise ValueError(
                f"config.init_checkpoint={config.init_checkpoint!r} holds a model of another size than "
                f"config.model={config.model!r} (text {base.text.num_layers} layers x {base.text.hidden_size}, "
                f"vision {depth} x {base.vision.hidden_size}); set config.model to its preset"
            )
    run_ = layout(config, base, data=data)
    model, mesh = run_.model, run_.mesh
    if params is not None:  # checkpoints may hold either layer layout; use the one the run asks for
        params = to_layout(params, model)
    data.check_model(model)
    if from_run:  # any saving mesh / device count and either layer layout: restored onto this mesh
        def saved_shardings(saved):
            layout_ = model.replace(scan_layers=is_stacked(saved))
            abstract = jax.eval_shape(functools.partial(init_params, layout_), jax.random.key(0))
            return parallel.logical_shardings(abstract, param_logical_axes(layout_), mesh)

        _, params, _ = load_run_params(config.init_checkpoint, sharding=saved_shardings)
        params = to_layout(params, model)
    if params is None:
        params = jax.jit(functools.partial(init_params, run_.model), out_shardings=run_.param_shardings)(
            jax.random.key(config.seed))
    else:
        params = jax.device_put(params, run_.param_shardings)
    epath.Path(config.workdir).mkdir(parents=True, exist_ok=True)  # local or gs://
    return run_, params


def layout(config: ml_collections.ConfigDict, base: ModelConfig, *, data: TrainData | None = None,
           devices: Any = None) -> Run:
    """The shape-level side of a run: the model config with the run's overrides, the mesh over
    `devices` (default: all) and the params' shardings. Nothing is materialised (the params'
    shapes come from `jax.eval_shape`), so `sif_jax.plan` uses it with compile-only devices."""
    mesh = parallel.make_mesh({"data": config.mesh.data, "fsdp": config.mesh.fsdp, "tensor": config.mesh.tensor},
                              devices)
    model = _model_config(config, base)
    shapes = jax.eval_shape(functools.partial(init_params, model), jax.random.key(0))
    shardings = parallel.logical_shardings(shapes, param_logical_axes(model), mesh)
    return Run(config, model, mesh, data, shardings, config.workdir)


def _is_hf_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, "config.json")) and any(
        n.endswith(".safetensors") for n in os.listdir(path))


def _state_shardings(run: Run, optimizer: optax.GradientTransformation, *, reference: bool,
                     lora: LoraConfig | None = None) -> TrainState:
    """Params (and the reference) follow the logical-axis shardings, optimizer moments their
    params', scalars are replicated. Under `lora` the trainable params are the adapters (each
    factor follows the axes of the kernel it adapts, `lora.AdapterSpec.factor_axes`), the base
    keeps the params' shardings and there is no reference copy."""
    rep = parallel.replicated(run.mesh)
    if lora is not None:
        specs = adapter_specs(run, lora)
        adapters = parallel.logical_shardings(lora_lib.adapter_shapes(specs, lora.rank),
                                              lora_lib.adapter_logical_axes(specs), run.mesh)
        opt = parallel.optimizer_shardings(optimizer, lora_lib.boxed_adapter_shapes(specs, lora.rank), run.mesh)
        return TrainState(step=rep, params=adapters, ref_params=None, opt_state=opt, rng=rep,
                          base=lora_lib.quantized_shardings(run.param_shardings, specs, lora.base_dtype))
    opt = parallel.optimizer_shardings(optimizer, abstract_boxed_params(run.model), run.mesh)
    return TrainState(step=rep, params=run.param_shardings, ref_params=run.param_shardings if reference else None,
                      opt_state=opt, rng=rep)


@contextlib.contextmanager
def _closing(ckpt: Checkpointer):
    """Waits for in-flight async saves even when the loop raises, so no save is cut off."""
    try:
        yield ckpt
    finally:
        ckpt.close()


def _make_apply(optimizer: optax.GradientTransformation, shardings: Any):
    @functools.partial(jax.jit, donate_argnums=0, out_shardings=shardings)
    def apply(state: TrainState, grads: Any) -> TrainState:
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                             opt_state=opt_state)

    return apply


def initial_state(params: Any, optimizer: optax.GradientTransformation, seed: int, *,
                  reference: bool, adapters: Any = None) -> TrainState:
    """A fresh state; the frozen KL reference (if `reference`) is a copy of `params` with its
    own buffers, since the policy params are donated to every update. Traceable (jit / eval_shape).

    With `adapters` (LoRA) the trainable params are the adapters, the optimizer state is theirs
    and `params` become the frozen `base` (no reference copy: the reference is the base)."""
    if adapters is not None:
        return TrainState(step=jnp.zeros((), jnp.int32), params=adapters, ref_params=None,
                          opt_state=optimizer.init(adapters), rng=jax.random.key_data(jax.random.key(seed)),
                          base=params)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        ref_params=jax.tree.map(jnp.copy, params) if reference else None,
        opt_state=optimizer.init(params), rng=jax.random.key_data(jax.random.key(seed)))


def _new_state(params: Any, optimizer: optax.GradientTransformation, seed: int, shardings: TrainState,
               adapters: Any = None) -> TrainState:
    """`initial_state` on the mesh, with a reference iff `shardings.ref_params`. With `adapters`
    the base is `params` themselves (already placed; not copied)."""
    build = functools.partial(initial_state, optimizer=optimizer, seed=seed,
                              reference=shardings.ref_params is not None)
    if adapters is None:
        return jax.jit(build, out_shardings=shardings)(params)
    state = jax.jit(lambda a: build(None, adapters=a), out_shardings=shardings.replace(base=None))(adapters)
    return state.replace(base=params)


def adapter_specs(run: Run, lora: LoraConfig) -> dict[str, lora_lib.AdapterSpec]:
    """The kernels the run's `lora.targets` select (raises ValueError naming a bad pattern)."""
    return lora_lib.adapter_specs(abstract_boxed_params(run.model), lora)


def initial_adapters(run: Run, lora: LoraConfig, seed: int, init_adapter: str = "") -> Any:
    """Fresh adapters (B = 0, so the run starts at the base) or, with `init_adapter`, a PEFT
    adapter directory's, placed with the adapters' shardings."""
    specs = adapter_specs(run, lora)
    shardings = _state_shardings(run, optax.identity(), reference=False, lora=lora).params
    if init_adapter:
        return jax.device_put(load_peft_adapter(init_adapter, specs, lora, run.model), shardings)
    return jax.jit(lambda k: lora_lib.init_adapters(specs, lora.rank, k), out_shardings=shardings)(
        jax.random.key(seed))


def frozen_base(run: Run, lora: LoraConfig | None, params: Any) -> Any:
    """The LoRA phase's frozen base: `params`, or with `lora.base_dtype` their adapted kernels
    quantised on the mesh (`lora.quantize_base`; the caller's full-precision `params` are not kept)."""
    if lora is None or not lora.base_dtype:
        return params
    specs = adapter_specs(run, lora)
    out = lora_lib.quantized_shardings(run.param_shardings, specs, lora.base_dtype)
    return jax.jit(lambda p: lora_lib.quantize_base(p, specs, lora.base_dtype), out_shardings=out)(params)


def _policy_params(run: Run, state: TrainState, lora: LoraConfig | None) -> Any:
    """The trained model's params: `state.params`, or the base with the adapters merged in."""
    if lora is None:
        return state.params
    return jax.jit(functools.partial(lora_lib.merge, scale=lora.scale), out_shardings=run.param_shardings)(
        state.base, state.params)


def _lora_meta(config: ml_collections.ConfigDict, lora: LoraConfig | None, base: str) -> dict:
    """Checkpoint metadata of a LoRA phase: the adapter config and which base it belongs to."""
    if lora is None:
        return {}
    return {"lora": {"rank": lora.rank, "alpha": lora.alpha, "dropout": lora.dropout, "targets": list(lora.targets),
                     "init_adapter": config.lora.init_adapter, "base": base, "base_dtype": lora.base_dtype}}


def _base_name(config: ml_collections.ConfigDict, phase: str) -> str:
    if phase == "grpo" and not config.init_checkpoint and config.sft.steps > 0:
        return "sft phase (its adapters merged into its base)"
    return config.init_checkpoint or f"init_params(model={config.model}, seed={config.seed})"


def _dropout_key(lora: LoraConfig | None, state: TrainState) -> jax.Array | None:
    if lora is None or lora.dropout == 0:
        return None
    return jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))


def sft_schedule(steps: int, learning_rate: float, warmup_fraction: float) -> optax.Schedule:
    """Linear warm-up from 0 over max(1, steps * warmup_fraction) steps (at most steps - 1, so at
    least one cosine step remains), then cosine decay to 0 at `steps`; steps = 1: one cosine step."""
    warmup = min(max(1, int(steps * warmup_fraction)), steps - 1)
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, steps)


def sft_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with warm-up + cosine decay over `sft.steps` (`sft_schedule`); the vision tower trains."""
    schedule = sft_schedule(config.sft.steps, config.sft.learning_rate, config.sft.warmup_fraction)
    return make_optimizer(schedule, freeze_vision=False)


def grpo_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return make_optimizer(config.grpo.learning_rate, freeze_vision=config.freeze_vision)


def run_sft(run: Run, params: Any, *, stop_after: int | None = None) -> Any:
    """The SFT warm-up (resumable); returns the trained params."""
    config = run.config
    steps = config.sft.steps
    if steps <= 0:
        return params
    optimizer = sft_optimizer(config)
    lora = lora_lib.from_run_config(config)
    shardings = _state_shardings(run, optimizer, reference=False, lora=lora)
    adapters = initial_adapters(run, lora, config.seed, config.lora.init_adapter) if lora else None
    state = _new_state(frozen_base(run, lora, params), optimizer, config.seed, shardings, adapters)
    ckpt = Checkpointer(str(epath.Path(run.workdir) / "sft"), every=config.checkpoint_every,
                        max_to_keep=config.max_checkpoints)
    data_iter = run.data.sft_iterator(config.sft.batch_size)
    start = 0
    if ckpt.latest_step() is not None:
        start, state, meta = ckpt.restore(abstract_with_shardings(state))
        data_iter.set_state(meta["data_state"])
        _say(f"SFT: resumed from step {start} of {steps} ({ckpt.directory})")
    if start >= steps:
        ckpt.close()
        return _policy_params(run, state, lora)
    apply = _make_apply(optimizer, shardings)
    writer = MetricsWriter(run.workdir, "sft_metrics")
    preempted = False
    bar = tqdm(range(start, steps), desc="SFT warm-up", initial=start, total=steps, disable=jax.process_index() != 0)
    with PreemptionGuard() as guard, _closing(ckpt):
        for step in bar:
            t0 = time.perf_counter()
            batch = _place(next(data_iter), run.mesh)
            batch = {**family_of(run.model).model_inputs(batch), "loss_mask": batch["loss_mask"]}
            denominator = jnp.maximum(jnp.sum(batch["loss_mask"][:, 1:]), 1)
            grads, (nll, tokens) = sft_grads(state.params, batch, denominator, state.base, _dropout_key(lora, state),
                                             config=run.model, lora=lora,
                                             grad_shardings=parallel.sharding_leaves(state.params))
            state = apply(state, grads)
            loss = float(nll / tokens)
            bar.set_postfix(loss=f"{loss:.3f}")
            writer.write({"step": step + 1, "sft_loss": loss, "seconds": time.perf_counter() - t0})
            done = step + 1
            preempted = parallel.any_process(guard.requested)  # all hosts stop at the same step
            stop = preempted or (stop_after is not None and done >= stop_after)
            ckpt.save(done, state, {"data_state": data_iter.get_state(), "phase": "sft", **_model_meta(run),
                                    **_lora_meta(config, lora, _base_name(config, "sft"))},
                      force=stop or done == steps)
            if stop:
                break
    if preempted:
        logging.warning("SIGTERM: SFT state saved at step %d", done)
        sys.exit(143)
    return _policy_params(run, state, lora)


def _say(line: str) -> None:
    if jax.process_index() == 0:
        tqdm.write(line)


def _model_meta(run: Run) -> dict:
    """What inference needs to rebuild the model from a checkpoint (see checkpoint.load_run_params)."""
    return {"model": run.model.to_hf_config(), "dtype": run.model.param_dtype, "tokenizer": run.config.tokenizer}


def grpo_settings(config: ml_collections.ConfigDict) -> tuple[GRPOConfig, RewardConfig]:
    g = config.grpo
    grpo = GRPOConfig(
        group_size=g.group_size, mu=g.mu, beta=g.beta, eps_low=g.eps_low, eps_high=g.eps_high,
        reduction=g.reduction, mass_layers=tuple(g.mass_layers),
        sampling=SamplingConfig(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                                top_k=g.top_k, candidates=int(g.get("sampling_candidates", 256))),
        vocab_chunk=g.vocab_chunk, mask_truncated_completions=g.mask_truncated_completions,
        share_prompts=g.get("share_prompts", True), lora=lora_lib.from_run_config(config),
    )
    r = config.rewards
    weights = {k: float(r[k]) for k in REWARD_NAMES}
    return grpo, RewardConfig(weights=weights, top_fraction=r.top_fraction)


def run_grpo(run: Run, params: Any, *, stop_after: int | None = None) -> tuple[Any, list[dict]]:
    """GRPO steps (resumable from <workdir>/grpo); returns the params and the metric rows."""
    config = run.config
    steps = config.grpo.steps
    grpo, reward_config = grpo_settings(config)
    optimizer = grpo_optimizer(config)
    lora = grpo.lora
    shardings = _state_shardings(run, optimizer, reference=config.grpo.beta != 0, lora=lora)
    # A PEFT adapter starts the first phase that trains (GRPO's base already holds SFT's adapters).
    init_adapter = config.lora.init_adapter if (config.init_checkpoint or config.sft.steps <= 0) else ""
    adapters = initial_adapters(run, lora, config.seed + 1, init_adapter) if lora else None
    state = _new_state(frozen_base(run, lora, params), optimizer, config.seed + 1, shardings, adapters)
    ckpt = Checkpointer(str(epath.Path(run.workdir) / "grpo"), every=config.checkpoint_every,
                        max_to_keep=config.max_checkpoints)
    data_iter = run.data.grpo_iterator(config.grpo.prompts_per_step)
    reward_state = RewardState()
    rows: list[dict] = []
    start = 0
    if ckpt.latest_step() is not None:
        start, state, meta = ckpt.restore(abstract_with_shardings(state))
        data_iter.set_state(meta["data_state"])
        reward_state = RewardState.from_json(meta["reward_state"])
        rows = meta.get("history", [])
        _say(f"GRPO: resumed from step {start} of {steps} ({ckpt.directory})")
    apply = _make_apply(optimizer, shardings)
    writer = MetricsWriter(run.workdir)
    tok = run.data.tokenizer
    preempted = False
    bar = tqdm(range(start, steps), desc="GRPO", initial=start, total=steps, disable=jax.process_index() != 0)
    with PreemptionGuard() as guard, _closing(ckpt):
        for step in bar:
            t0 = time.perf_counter()
            micro = [_place(next(data_iter), run.mesh) for _ in range(config.grpo.prompts_per_step
                                                                       // config.grpo.micro_batch_prompts)]
            state = state.replace(rng=jax.random.key_data(
                jax.random.fold_in(jax.random.wrap_key_data(state.rng), step)))
            rollouts, reward_state, metrics = collect_rollouts(
                state, micro, config=run.model, grpo=grpo, decode=tok.decode, reward_config=reward_config,
                reward_state=reward_state, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
            )
            state, update_metrics = policy_update(state, rollouts, config=run.model, grpo=grpo, optimizer=optimizer,
                                                  apply_updates=apply)
            example_text = metrics.pop("texts_example")
            row = {"step": step + 1, **metrics, **update_metrics, "seconds": time.perf_counter() - t0}
            rows.append(row)
            writer.write(row)
            bar.set_postfix(reward=f"{row['reward']:.2f}", acc=f"{row.get('accuracy_s_mean', 0):.2f}",
                            tas=f"{row.get('tas_mean', 0):.2f}")
            if (step + 1) % config.log_every == 0 and jax.process_index() == 0:
                tqdm.write(_log_line(row) + f"\n    sample: {example_text[:160]!r}")
            done = step + 1
            preempted = parallel.any_process(guard.requested)  # all hosts stop at the same step
            stop = preempted or (stop_after is not None and done >= stop_after)
            ckpt.save(done, state, {"data_state": data_iter.get_state(), "reward_state": reward_state.to_json(),
                                    "history": rows, "phase": "grpo", **_model_meta(run),
                                    **_lora_meta(config, lora, _base_name(config, "grpo"))},
                      force=stop or done == steps)
            if stop:
                break
    if preempted:
        logging.warning("SIGTERM: GRPO state saved at step %d", done)
        sys.exit(143)
    return _policy_params(run, state, lora), rows


def _log_line(row: dict) -> str:
    keys = ("reward", "format_mean", "accuracy_s_mean", "iou_mean", "depth_mean", "region_attention_mean",
            "tas_mean", "kl_mean", "entropy", "completion_length", "truncated_fraction", "sampler_tokens_per_s",
            "seconds")
    return f"step {row['step']}: " + " ".join(f"{k}={row[k]:.3g}" for k in keys if k in row)


def evaluate_heldout(run: Run, params: Any) -> dict:
    grpo, reward_config = grpo_settings(run.config)
    tok = run.data.tokenizer
    result = evaluate_batches(
        params, (_place(b, run.mesh) for b in run.data.eval_batches()), config=run.model, decode=tok.decode,
        max_new_tokens=grpo.sampling.max_new_tokens, mass_layers=grpo.mass_layers, eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id, reward_config=reward_config, answer_tag=answer_tag_ids(tok, "trace"),
    )
    return result.summary()


def run(config: ml_collections.ConfigDict, *, stop_after: int | None = None) -> dict:
    """The whole recipe; `stop_after` ends the GRPO phase early (as a preemption would)."""
    validate_config(config)
    run_, params = _setup(config)
    # The mesh context: the Pallas attention kernels shard_map over it (XLA cannot partition them).
    with jax.set_mesh(run_.mesh):
        return _run_phases(run_, params, stop_after=stop_after)


def _run_phases(run_: Run, params: Any, *, stop_after: int | None) -> dict:
    config = run_.config
    if not config.init_checkpoint:
        params = run_sft(run_, params)
    summary_path = epath.Path(run_.workdir) / "summary.json"
    summary: dict = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if config.grpo.steps <= 0:
        summary["eval"] = evaluate_heldout(run_, params)
        _write_summary(summary_path, summary)
        _print_eval("held-out after SFT", summary["eval"])
        _say(f"SFT checkpoints: {epath.Path(run_.workdir) / 'sft'}; metrics: "
             f"{epath.Path(run_.workdir) / 'sft_metrics.jsonl'}; summary: {summary_path}\n"
             f"next: python -m sif_jax.train --config=configs/grpo.py --config.init_checkpoint={run_.workdir}")
        return summary
    if "before" not in summary:
        summary["before"] = evaluate_heldout(run_, params)
        _write_summary(summary_path, summary)
        _print_eval("held-out before GRPO", summary["before"])
    params, rows = run_grpo(run_, params, stop_after=stop_after)
    if stop_after is not None and len(rows) < config.grpo.steps:
        return summary
    summary["after"] = evaluate_heldout(run_, params)
    summary["grpo_reward_curve"] = [round(r["reward"], 4) for r in rows]
    summary["seconds_per_step"] = float(np.mean([r["seconds"] for r in rows])) if rows else None
    summary["sampler_tokens_per_s"] = float(np.mean([r["sampler_tokens_per_s"] for r in rows])) if rows else None
    _write_summary(summary_path, summary)
    _print_eval("held-out after GRPO", summary["after"])
    _say(f"checkpoints: {epath.Path(run_.workdir) / 'grpo'}; metrics: {epath.Path(run_.workdir) / 'metrics.jsonl'}; "
         f"summary: {summary_path}")
    return summary


def _write_summary(path: epath.Path, summary: dict) -> None:
    if jax.process_index() == 0:
        path.write_text(json.dumps(summary, indent=2, sort_keys=True))


def _print_eval(title: str, result: dict) -> None:
    def fmt(key: str) -> str:
        value = result.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    if jax.process_index() == 0:
        print(f"{title}: accuracy={fmt('accuracy')} TAS={fmt('tas')} format={fmt('format')} "
              f"final-area IoU={fmt('final_iou')} ({result.get('examples', 0)} examples)", flush=True)


def main(argv: list[str]) -> None:
    del argv
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config=configs/grpo.py")
    config = _CONFIG.value
    verbose = FLAGS.verbosity > 0
    if _VALIDATE_ONLY.value:
        try:
            validate_config(config, check_paths=False)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print("config ok")
        return
    if not verbose:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:  # config and input errors: one line naming the problem, no traceback (unless -v 1)
        validate_config(config)
        run_, params = _setup(config)
    except (ValueError, FileNotFoundError) as e:
        if verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    _run_phases(run_, params, stop_after=None)


def _parse_flags(argv: list[str]) -> list[str]:
    """A config typo (`--config.grpo.grup_size=4`) is one `error:` line naming the closest field."""
    from sif_jax.cli import parse_config_flags

    return parse_config_flags(argv, "sif_jax.train", verbose_flags=("-v", "--verbosity", "--v"))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
