"""`python -m sif_jax.train --config=configs/grpo.py`: SFT warm-up, then GRPO-SIF + SAYO.

Runs sharded over every device (a ('data', 'fsdp', 'tensor') mesh from the config). The config
file's ConfigDict is read once into a typed `run_config.RunConfig`. Each phase is a step function
(`sft_step`, `grpo_step`) plus its checkpoint metadata, run by `loop.run_loop`: orbax checkpoints
every `checkpoint_every` steps and on SIGTERM, resume from the newest one with the same data order,
a tqdm bar, a log line every `log_every` steps, and metric rows in `<workdir>/metrics.jsonl`
(`sft_metrics.jsonl`) and TensorBoard (`<workdir>/tensorboard/`); held-out accuracy and TAS before
and after GRPO go to `summary.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from sif_jax import lora as lora_lib
from sif_jax import parallel, region_supervision
from sif_jax.batch import Batch
from sif_jax.checkpoint import Checkpointer, load_run_params, run_checkpoint_meta
from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.evaluation import evaluate_batches
from sif_jax.infer.adaptvis import answer_tag_ids
from sif_jax.loop import MetricsWriter, Phase, run_loop, say
from sif_jax.lora import LoraConfig
from sif_jax.lora_peft import load_peft_adapter
from sif_jax.model.config import ModelConfig
from sif_jax.model.family import family_of, get_preset
from sif_jax.model.layout import is_stacked, to_layout
from sif_jax.optim import make_optimizer
from sif_jax.rl import grpo as grpo_lib
from sif_jax.rl.grpo import GRPOConfig, TrainState
from sif_jax.rl.rewards import RewardConfig, RewardState
from sif_jax.run_config import RunConfig, build, validate_config
from sif_jax.sft import loss_weights, sft_grads
from sif_jax.train_data import TrainData

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.")
_VALIDATE_ONLY = flags.DEFINE_bool("validate_only", False, "Check the config and its overrides (not that paths "
                                   "exist), print 'config ok' and exit: launch/tpu_vm.sh runs this before a VM.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show tracebacks (as absl's -v 1, which also shows INFO logs).")
FLAGS = flags.FLAGS


def init_params(model: Any, rng: jax.Array) -> Any:
    return family_of(model).init_params(model, rng)


def param_logical_axes(model: Any) -> Any:
    return family_of(model).param_logical_axes(model)


def abstract_boxed_params(model: Any) -> Any:
    return family_of(model).abstract_boxed_params(model)


def as_run_config(config: ml_collections.ConfigDict | RunConfig) -> RunConfig:
    """The typed run config (`run_config.build` without the file checks); a RunConfig passes through."""
    return build(config, check_files=False)


def _model_config(config: RunConfig, base: ModelConfig) -> ModelConfig:
    m = config.model
    return base.replace(attention_backend=m.attention_backend or None, scan_layers=m.scan_layers,
                        remat_policy=m.remat_policy)


def _place(batch: Batch, mesh) -> Batch:
    return parallel.shard_batch(batch, mesh)


@dataclasses.dataclass
class Run:
    """What every phase shares: config, model, mesh, data, shardings."""

    config: RunConfig
    model: ModelConfig
    mesh: Any
    data: TrainData | None  # None when only planning (sif_jax.plan)
    param_shardings: Any
    workdir: str


def _setup(config: ml_collections.ConfigDict | RunConfig) -> tuple[Run, Any]:
    """The run's data, model, mesh and initial params (from `model.init_checkpoint` or fresh).
    Raises ValueError naming the field for a config or checkpoint that does not fit."""
    config = build(config)
    m = config.model
    d = config.distributed
    parallel.initialize_distributed(d.coordinator_address or None, d.num_processes or None,
                                    d.process_id if d.process_id >= 0 else None)
    data = TrainData(config)
    params = None
    from_run = False
    if not m.init_checkpoint:
        base = get_preset(m.preset)
    else:  # HF directory, `sif_jax.export` directory or a run directory (e.g. workdir/sft)
        from sif_jax.checkpoint_loading import load_params, load_tokenizer, read_checkpoint_info
        from sif_jax.errors import InputError

        try:
            info = read_checkpoint_info(m.init_checkpoint)
            if not m.tokenizer:  # the tokenizer the checkpoint names or holds
                data.tokenizer = load_tokenizer("", info, flag="--config.tokenizer")
        except InputError as e:
            raise ValueError(f"config.init_checkpoint={m.init_checkpoint!r}: {e}") from None
        if info.kind == "hf":
            base, params = load_hf_checkpoint(m.init_checkpoint)
        elif info.kind == "params":  # python -m sif_jax.export --format=orbax
            base, params = info.config, load_params(info)
        else:  # a run directory, restored below onto this mesh
            base, _, _, _ = run_checkpoint_meta(m.init_checkpoint)
            from_run = True
    if m.init_checkpoint:
        preset = get_preset(m.preset)
        if type(base) is not type(preset) or (base.text, base.vision) != (preset.text, preset.vision):
            depth = getattr(base.vision, "depth", getattr(base.vision, "num_layers", None))
            raise ValueError(
                f"config.init_checkpoint={m.init_checkpoint!r} holds a model of another size than "
                f"config.model={m.preset!r} (text {base.text.num_layers} layers x {base.text.hidden_size}, "
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

        _, params, _ = load_run_params(m.init_checkpoint, sharding=saved_shardings)
        params = to_layout(params, model)
    if params is None:
        params = jax.jit(functools.partial(init_params, run_.model), out_shardings=run_.param_shardings)(
            jax.random.key(config.seed))
    else:
        params = jax.device_put(params, run_.param_shardings)
    if m.vision_init:  # a pre-trained vision tower (benchmarks/vision_cells.py --save)
        from sif_jax.checkpoint_loading import load_vision_tower

        if "visual" not in params:
            raise ValueError(f"config.vision_init={m.vision_init!r}: the {model.family} family's vision tower "
                             "cannot be loaded this way (Qwen-VL families only)")
        visual = load_vision_tower(m.vision_init, params["visual"])
        params = jax.device_put({**params, "visual": visual}, run_.param_shardings)
    epath.Path(config.workdir).mkdir(parents=True, exist_ok=True)  # local or gs://
    return run_, params


def layout(config: ml_collections.ConfigDict | RunConfig, base: ModelConfig, *, data: TrainData | None = None,
           devices: Any = None) -> Run:
    """The shape-level side of a run: the model config with the run's overrides, the mesh over
    `devices` (default: all) and the params' shardings. Nothing is materialised (the params'
    shapes come from `jax.eval_shape`), so `sif_jax.plan` uses it with compile-only devices."""
    config = as_run_config(config)
    mesh = parallel.make_mesh(config.mesh.axes(), devices)
    model = _model_config(config, base)
    shapes = jax.eval_shape(functools.partial(init_params, model), jax.random.key(0))
    shardings = parallel.logical_shardings(shapes, param_logical_axes(model), mesh)
    return Run(config, model, mesh, data, shardings, config.workdir)


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


def _lora_meta(config: RunConfig, lora: LoraConfig | None, base: str) -> dict:
    """Checkpoint metadata of a LoRA phase: the adapter config and which base it belongs to."""
    if lora is None:
        return {}
    return {"lora": {"rank": lora.rank, "alpha": lora.alpha, "dropout": lora.dropout, "targets": list(lora.targets),
                     "init_adapter": config.lora.init_adapter, "base": base, "base_dtype": lora.base_dtype}}


def _base_name(config: RunConfig, phase: str) -> str:
    m = config.model
    if phase == "grpo" and not m.init_checkpoint and config.sft.steps > 0:
        return "sft phase (its adapters merged into its base)"
    return m.init_checkpoint or f"init_params(model={m.preset}, seed={config.seed})"


def _dropout_key(lora: LoraConfig | None, state: TrainState) -> jax.Array | None:
    if lora is None or lora.dropout == 0:
        return None
    return jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))


def sft_schedule(steps: int, learning_rate: float, warmup_fraction: float) -> optax.Schedule:
    """Linear warm-up from 0 over max(1, steps * warmup_fraction) steps (at most steps - 1, so at
    least one cosine step remains), then cosine decay to 0 at `steps`; steps = 1: one cosine step."""
    warmup = min(max(1, int(steps * warmup_fraction)), steps - 1)
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, steps)


def sft_optimizer(config: ml_collections.ConfigDict | RunConfig) -> optax.GradientTransformation:
    """AdamW with warm-up + cosine decay over `sft.steps` (`sft_schedule`); the vision tower trains
    unless `sft.freeze_vision`."""
    sft = as_run_config(config).sft
    return make_optimizer(sft_schedule(sft.steps, sft.learning_rate, sft.warmup_fraction),
                          freeze_vision=sft.freeze_vision)


def grpo_optimizer(config: ml_collections.ConfigDict | RunConfig) -> optax.GradientTransformation:
    config = as_run_config(config)
    return make_optimizer(config.grpo.learning_rate, freeze_vision=config.model.freeze_vision)


def _checkpointer(run: Run, phase: str) -> Checkpointer:
    c = run.config.checkpointing
    return Checkpointer(str(epath.Path(run.workdir) / phase), every=c.every, max_to_keep=c.max_to_keep)


def sft_step(state: TrainState, batch: Batch, *, run: Run, lora: LoraConfig | None,
             apply: Any) -> tuple[TrainState, dict[str, float]]:
    """One SFT step on a collated batch (placed on the mesh): the token-mean NLL of the masked
    (assistant) tokens, answer tokens weighted by `sft.answer_weight` (`sft.loss_weights`), plus
    `sft.region_attention_weight` × the region-attention term (`region_supervision`), and its
    gradients (`sft.sft_grads`), then the optimizer update `apply`. Logs the weighted NLL mean and,
    when supervised, the mean −log region mass (`sft_region_nll`)."""
    sft = run.config.sft
    weights = loss_weights(batch.loss_mask, batch.answer_start, sft.answer_weight)
    denominator = jnp.maximum(jnp.sum(weights[:, 1:]), 1.0)
    supervised = sft.region_attention_weight > 0
    layers = region_supervision.layer_indices(sft.region_attention_layers, run.model.text.num_layers) \
        if supervised else ()
    grads, (nll, tokens, region_sum, region_rows) = sft_grads(
        state.params, batch.inputs, weights, denominator, state.base, _dropout_key(lora, state),
        batch.region_mask if supervised else None, config=run.model, lora=lora,
        grad_shardings=parallel.sharding_leaves(state.params), region_weight=float(sft.region_attention_weight),
        region_layers=layers)
    state = apply(state, grads)
    metrics = {"sft_loss": float(nll / tokens)}
    if supervised:
        metrics["sft_region_nll"] = float(region_sum / max(float(region_rows), 1.0))
    return state, metrics


def run_sft(run: Run, params: Any, *, stop_after: int | None = None) -> Any:
    """The SFT warm-up (resumable from <workdir>/sft, `loop.run_loop`); returns the trained params."""
    config = run.config
    steps = config.sft.steps
    if steps <= 0:
        return params
    optimizer = sft_optimizer(config)
    lora = config.lora.config
    shardings = _state_shardings(run, optimizer, reference=False, lora=lora)
    adapters = initial_adapters(run, lora, config.seed, config.lora.init_adapter) if lora else None
    state = _new_state(frozen_base(run, lora, params), optimizer, config.seed, shardings, adapters)
    data_iter = run.data.sft_iterator(config.sft.batch_size)
    apply = _make_apply(optimizer, shardings)
    static_meta = {"phase": "sft", **_model_meta(run), **_lora_meta(config, lora, _base_name(config, "sft"))}

    def step_fn(state: TrainState, step: int) -> tuple[TrainState, dict[str, float]]:
        return sft_step(state, _place(next(data_iter), run.mesh), run=run, lora=lora, apply=apply)

    phase = Phase(
        name="SFT", steps=steps, checkpointer=_checkpointer(run, "sft"),
        writer=MetricsWriter(run.workdir, "sft_metrics", tensorboard="sft"),
        metadata=lambda: {"data_state": data_iter.get_state(), **static_meta},
        restore=lambda meta: data_iter.set_state(meta["data_state"]),
        desc="SFT warm-up", postfix=lambda row: {"loss": f"{row['sft_loss']:.3f}"})
    result = run_loop(phase, state, step_fn, stop_after=stop_after)
    return _policy_params(run, result.state, lora)


def _model_meta(run: Run) -> dict:
    """What inference needs to rebuild the model from a checkpoint (see checkpoint.load_run_params)."""
    return {"model": run.model.to_hf_config(), "dtype": run.model.param_dtype, "tokenizer": run.config.model.tokenizer}


def grpo_settings(config: ml_collections.ConfigDict | RunConfig) -> tuple[GRPOConfig, RewardConfig]:
    """The `rl.grpo.GRPOConfig` and `rl.rewards.RewardConfig` of a run config."""
    config = as_run_config(config)
    g = config.grpo
    grpo = GRPOConfig(
        group_size=g.group_size, mu=g.mu, beta=g.beta, eps_low=g.eps_low, eps_high=g.eps_high,
        reduction=g.reduction, mass_layers=tuple(g.mass_layers), sampling=g.sampling(), vocab_chunk=g.vocab_chunk,
        mask_truncated_completions=g.mask_truncated_completions, share_prompts=g.share_prompts,
        lora=config.lora.config,
    )
    r = config.rewards
    return grpo, RewardConfig(weights=dict(r.weights), top_fraction=r.top_fraction)


def grpo_step(state: TrainState, micro: list[Batch], reward_state: RewardState, *, run: Run,
              grpo: GRPOConfig, reward_config: RewardConfig, optimizer: optax.GradientTransformation,
              apply: Any) -> tuple[TrainState, RewardState, dict[str, float], str]:
    """One GRPO step on a step's micro-batches of prompts (placed on the mesh): sample G completions
    per prompt and score them (rewards, advantages), then `grpo.mu` policy updates.

    Returns the new state, the reward state (running statistics some rewards normalise by), the
    step's metrics (floats) and one decoded completion as an example."""
    tok = run.data.tokenizer
    return grpo_lib.grpo_step(state, micro, config=run.model, grpo=grpo, apply_updates=apply, decode=tok.decode,
                              reward_config=reward_config, reward_state=reward_state, eos_token_id=tok.eos_id,
                              pad_token_id=tok.pad_id)


def run_grpo(run: Run, params: Any, *, stop_after: int | None = None) -> tuple[Any, list[dict]]:
    """GRPO steps (resumable from <workdir>/grpo, `loop.run_loop`); returns the params and the metric
    rows of every step (those before a resume are read back from metrics.jsonl)."""
    config = run.config
    grpo, reward_config = grpo_settings(config)
    optimizer = grpo_optimizer(config)
    lora = grpo.lora
    shardings = _state_shardings(run, optimizer, reference=config.grpo.beta != 0, lora=lora)
    # A PEFT adapter starts the first phase that trains (GRPO's base already holds SFT's adapters).
    init_adapter = config.lora.init_adapter if (config.model.init_checkpoint or config.sft.steps <= 0) else ""
    adapters = initial_adapters(run, lora, config.seed + 1, init_adapter) if lora else None
    state = _new_state(frozen_base(run, lora, params), optimizer, config.seed + 1, shardings, adapters)
    data_iter = run.data.grpo_iterator(config.grpo.prompts_per_step)
    apply = _make_apply(optimizer, shardings)
    static_meta = {"phase": "grpo", **_model_meta(run), **_lora_meta(config, lora, _base_name(config, "grpo"))}
    carry = {"reward_state": RewardState(), "example": ""}  # what the step hands to the next and to the log

    def step_fn(state: TrainState, step: int) -> tuple[TrainState, dict[str, float]]:
        micro = [_place(next(data_iter), run.mesh) for _ in range(config.grpo.micro_batches)]
        state = state.replace(rng=jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state.rng), step)))
        state, carry["reward_state"], metrics, carry["example"] = grpo_step(
            state, micro, carry["reward_state"], run=run, grpo=grpo, reward_config=reward_config,
            optimizer=optimizer, apply=apply)
        return state, metrics

    def restore(meta: dict) -> None:
        data_iter.set_state(meta["data_state"])
        carry["reward_state"] = RewardState.from_json(meta["reward_state"])

    phase = Phase(
        name="GRPO", steps=config.grpo.steps, checkpointer=_checkpointer(run, "grpo"),
        writer=MetricsWriter(run.workdir, "metrics", tensorboard="grpo"),
        metadata=lambda: {"data_state": data_iter.get_state(), "reward_state": carry["reward_state"].to_json(),
                          **static_meta},
        restore=restore, desc="GRPO",
        postfix=lambda row: {"reward": f"{row['reward']:.2f}", "acc": f"{row.get('accuracy_s_mean', 0):.2f}",
                             "tas": f"{row.get('tas_mean', 0):.2f}"},
        log_line=lambda row: _log_line(row) + f"\n    sample: {carry['example'][:160]!r}",
        log_every=config.log_every)
    result = run_loop(phase, state, step_fn, stop_after=stop_after)
    return _policy_params(run, result.state, lora), result.rows


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


def run(config: ml_collections.ConfigDict | RunConfig, *, stop_after: int | None = None) -> dict:
    """The whole recipe; `stop_after` ends the GRPO phase early (as a preemption would). The config
    is read once (`run_config.build`, which raises ValueError naming a bad field)."""
    run_, params = _setup(build(config))
    # The mesh context: the Pallas attention kernels shard_map over it (XLA cannot partition them).
    with jax.set_mesh(run_.mesh):
        return _run_phases(run_, params, stop_after=stop_after)


def _run_phases(run_: Run, params: Any, *, stop_after: int | None) -> dict:
    config = run_.config
    if not config.model.init_checkpoint:
        params = run_sft(run_, params)
    summary_path = epath.Path(run_.workdir) / "summary.json"
    summary: dict = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if config.grpo.steps <= 0:
        summary["eval"] = evaluate_heldout(run_, params)
        _write_summary(summary_path, summary)
        _print_eval("held-out after SFT", summary["eval"])
        say(f"SFT checkpoints: {epath.Path(run_.workdir) / 'sft'}; metrics: "
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
    _print_family_table(summary["before"], summary["after"])
    say(f"checkpoints: {epath.Path(run_.workdir) / 'grpo'}; metrics: {epath.Path(run_.workdir) / 'metrics.jsonl'}; "
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


def _print_family_table(before: dict, after: dict) -> None:
    """Held-out accuracy per question family (`EvalResult.summary`'s groups), before → after GRPO."""
    families = {**before.get("groups", {}).get("family", {}), **after.get("groups", {}).get("family", {})}
    if not families or jax.process_index() != 0:
        return

    def acc(result: dict, family: str) -> str:
        value = result.get("accuracy_by_family", {}).get(family)
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"  {f:<10} {acc(before, f)} -> {acc(after, f)}  ({g['examples']} examples)"
             for f, g in sorted(families.items())]
    print("held-out accuracy by question family, before -> after GRPO:\n" + "\n".join(lines), flush=True)


def main(argv: list[str]) -> None:
    """The command line (`cli` convention): a bad config or input is one `error:` line, exit 2; a
    failure while training is one `error:` line, exit 1; `--verbose` (or `-v 1`) shows tracebacks."""
    from sif_jax.cli import USAGE_STATUS, fail, run_cli

    del argv
    config = _CONFIG.value
    if config is None:
        fail("--config is required, e.g. --config=configs/grpo.py (see python -m sif_jax.train --helpfull)",
             USAGE_STATUS)
    verbose = _VERBOSE.value or FLAGS.verbosity > 0
    if _VALIDATE_ONLY.value:
        run_cli(lambda: validate_config(config, check_paths=False), verbose, usage_errors=(ValueError,))
        print("config ok")
        return
    if not verbose:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO

    def setup() -> tuple[Run, Any]:
        return _setup(build(config))  # the config is read once, here

    run_, params = run_cli(setup, verbose, usage_errors=(ValueError, FileNotFoundError))
    run_cli(lambda: _run_phases(run_, params, stop_after=None), verbose)


def _parse_flags(argv: list[str]) -> list[str]:
    """A config typo (`--config.grpo.grup_size=4`) is one `error:` line naming the closest field."""
    from sif_jax.cli import parse_config_flags

    return parse_config_flags(argv, "sif_jax.train", verbose_flags=("--verbose", "-v", "--verbosity", "--v"))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
