"""`python -m sif_jax.plan --config=configs/grpo.py --topology=v5p-8 [--config.*] [--json]`: will the run fit?

On any host with libtpu installed (no TPU needed) this builds the run's abstract state (params,
optimizer state, KL reference, batches at the configured buckets) with the run's own shardings
(`train.layout`, `train._state_shardings`) and AOT-compiles, for the target TPU slice, every
program a run executes, with the same jitted functions the trainer calls:

    sft_grads         sft.sft_grads on a `sft.batch_size` batch at the largest length bucket
    sft_update        the optimizer step of the SFT warm-up (train._make_apply)
    sampler_prefill   model.cache.prefill as `infer.sampler.generate` uses it (cache + last logits)
    sampler_decode    one model.cache.decode_step (one token per row), the decode loop's body
    sampler_generate  infer.sampler.generate: prefill + the whole decode while-loop
    score_policy      infer.scoring.score with the SAYO attention masses
    score_reference   infer.scoring.score under the frozen reference (only when grpo.beta != 0)
    grpo_loss_grads   rl.grpo.loss_grads: clipped surrogate + KL, gradient of one micro-batch
    grpo_update       the GRPO optimizer step (train._make_apply, vision frozen per config)
    lora_merge        (LoRA runs) rl.grpo.policy_params: the base with the adapters merged in, once
                      per step before sampling

With `lora.rank` > 0 the state is the LoRA one (`train.initial_state(..., adapters=...)`): the
trainable params and the optimizer moments are the adapters', the base is frozen and there is
no reference copy (the reference scores with the base). With `lora.base_dtype` ("int8",
"float8_e4m3fn") the base's adapted kernels are the quantised ones (`lora.quantize_base`) in the
state and in the loss, merge and reference programs, which dequantise them inside. The loss and update programs take the
adapters (plus the base), the sampler and scorers the merged params (a transient as large as the
base, counted as their argument while the whole state stays resident).

Nothing is materialised: params come from `jax.eval_shape`, so a 7B plan needs no 7B of memory.
Batches are planned at the worst case: the largest `data.length_buckets` entry for the prompt
(and for SFT's prompt + trace) and the image of `data.image_size` at its patch bucket; a GRPO
micro-batch has `grpo.micro_batch_prompts * grpo.group_size` rows.

Per program and per chip it reports XLA's memory analysis (arguments, temporaries, outputs; an
output aliased to a donated argument is counted once), plus the train-state bytes that stay
resident in HBM while the program runs but are not its arguments (e.g. the optimizer moments
during sampling, and the gradient accumulator during the loss when a step has several
micro-batches). total = arguments + temporaries + outputs - aliased + resident, compared with the
chip's HBM. XLA's cost analysis gives FLOPs and bytes accessed per chip; the roofline time is
max(FLOPs / peak bf16 FLOP/s, bytes / HBM bandwidth), a lower bound that ignores collectives.
The decode loop's cost analysis counts its body once, so `sampler_generate`'s time is
prefill + max_new_tokens x decode step (the longest generation).

The attention backend is `config.attention_backend`; its default ("" = by platform) means the
TPU kernel on a TPU run, so the plan uses "pallas_tpu" then. Model overrides reach the model
exactly as in training (`train.layout` -> `train._model_config`).

Exit status: 0 when every program compiles and fits; 1 naming the first program that does not
compile or fit; 2 for a bad topology or config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from jax.sharding import NamedSharding

from sif_jax import lora as lora_lib
from sif_jax import parallel, region_supervision, train
from sif_jax.batch import Batch, ModelInputs, batch_axis
from sif_jax.data.batching import pick_bucket
from sif_jax.infer.sampler import generate
from sif_jax.infer.scoring import score
from sif_jax.model.cache import decode_step, prefill
from sif_jax.model.family import ImageInputs, family_of, get_preset
from sif_jax.rl import grpo as grpo_lib
from sif_jax.rl.types import Rollout
from sif_jax.run_config import RunConfig, validate_config
from sif_jax.sft import sft_grads

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip (one JAX device; v4 in megacore mode). Cloud TPU system-architecture pages:
    peak bf16 FLOP/s per chip, HBM capacity (bytes) and HBM bandwidth (bytes/s)."""

    generation: str
    peak_flops: float
    hbm_bytes: int
    hbm_bandwidth: float


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 275e12, 32 * GIB, 1200e9),
    "v5e": Chip("v5e", 197e12, 16 * GIB, 819e9),
    "v5p": Chip("v5p", 459e12, 95 * GIB, 2765e9),
    "v6e": Chip("v6e", 918e12, 32 * GIB, 1640e9),
}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A Cloud TPU accelerator type as `jax.experimental.topologies.get_topology_desc` names it."""

    topology_name: str
    chips: int
    generation: str
    options: tuple[tuple[str, str], ...] = ()


# Accelerator type -> topology. v5p-N and v4-N count TensorCores (2 per chip); their chips run as
# one megacore device each (v4 needs chip_config_name="megacore" for that).
ACCELERATORS: dict[str, Slice] = {
    "v4-8": Slice("v4:2x2x1", 4, "v4", (("chip_config_name", "megacore"),)),
    "v5litepod-8": Slice("v5e:2x4", 8, "v5e"),
    "v5litepod-16": Slice("v5e:4x4", 16, "v5e"),
    "v5litepod-64": Slice("v5e:8x8", 64, "v5e"),
    "v5p-8": Slice("v5p:2x2x1", 4, "v5p"),
    "v5p-64": Slice("v5p:2x4x4", 32, "v5p"),
    "v6e-8": Slice("v6e:2x4", 8, "v6e"),
    "v6e-16": Slice("v6e:4x4", 16, "v6e"),
}


def topology_devices(accelerator: str) -> tuple[list[jax.Device], Chip]:
    """The compile-only devices of a Cloud TPU accelerator type (e.g. "v5p-8") and its chip.

    Raises:
      ValueError: an unknown accelerator type (naming the known ones), or a topology whose
        device count differs from the table's chips.
    """
    if accelerator not in ACCELERATORS:
        raise ValueError(f"--topology={accelerator!r} is unknown; choose one of {sorted(ACCELERATORS)}")
    s = ACCELERATORS[accelerator]
    from jax.experimental import topologies

    devices = list(topologies.get_topology_desc(platform="tpu", topology_name=s.topology_name,
                                                **dict(s.options)).devices)
    if len(devices) != s.chips:
        raise ValueError(f"--topology={accelerator!r}: {s.topology_name} gave {len(devices)} devices, "
                         f"expected {s.chips} chips")
    return devices, CHIPS[s.generation]


# --- abstract batches ----------------------------------------------------------------------------


def example_image(config: RunConfig, model: Any) -> tuple[ImageInputs, int]:
    """(the family's processing of a blank `data.image_size` square image at the min / max
    pixels (`data.min_pixels` / `data.max_pixels`, else the family's `pixel_bounds`), its patch bucket
    from `data.patch_buckets`)."""
    family = family_of(model)
    low, high = family.pixel_bounds(model)
    low, high = config.data.min_pixels or low, config.data.max_pixels or high
    side = config.data.image_size
    img = family.process_example_image(np.zeros((side, side, 3), np.uint8), np.zeros((0, 4), np.float32),
                                       model, min_pixels=low, max_pixels=high)
    return img, pick_bucket(img.num_patches, tuple(config.data.patch_buckets), "patches of one image")


def abstract_batch(config: RunConfig, model: Any, mesh, rows: int, length: int, *,
                   sft: bool) -> Batch:
    """A collated batch of `rows` rows padded to `length` tokens as ShapeDtypeStructs (its model
    inputs the family's module takes, `region_mask`, and with `sft` `loss_mask` bool [rows, length]),
    with the shardings `train._place` gives them (batch axis over data x fsdp, the rest replicated).

    The layout is the real one: the family's `collate_images` runs on a one-row batch (vision start,
    the image's pads, vision end, filler text; `example_image`) and each array's batch axis (declared
    on its `sif_jax.batch` field) is widened to `rows`.
    """
    family = family_of(model)
    img, patches = example_image(config, model)
    start, end = getattr(model, "vision_start_token_id", None), getattr(model, "vision_end_token_id", None)
    # a family without vision start / end tokens (LLaVA) has None or a negative id there
    start, end = (t if t is not None and t >= 0 else None for t in (start, end))
    image_ids = [*([start] if start is not None else []), *[model.image_token_id] * img.num_tokens,
                 *([end] if end is not None else [])]
    if length < len(image_ids) + 1:
        raise ValueError(f"config.data.length_buckets: {length} tokens cannot hold the {img.num_tokens} image tokens "
                         f"of a {config.data.image_size}px image")
    ids = np.full((1, length), model.bos_token_id, np.int32)
    ids[0, :len(image_ids)] = image_ids
    one = family.collate_images(model, ids, np.ones_like(ids), [img.arrays], patches)

    def widen(cls: type, name: str, value: np.ndarray) -> jax.ShapeDtypeStruct:
        axis = batch_axis(cls, name)
        shape = list(value.shape)
        shape[axis] = rows
        return jax.ShapeDtypeStruct(tuple(shape), value.dtype, sharding=parallel.batch_sharding(mesh, shape, axis))

    inputs = ModelInputs(**{name: widen(ModelInputs, name, one[name]) for name in family.model_inputs(one)})
    mask = np.zeros((1, length), bool)
    return Batch(inputs, region_mask=widen(Batch, "region_mask", mask),
                 loss_mask=widen(Batch, "loss_mask", mask) if sft else None)


def with_shardings(shapes: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `shapes` carrying the matching leaf of `shardings`."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def per_chip_bytes(tree: Any) -> int:
    """The largest per-device footprint of a tree of sharded ShapeDtypeStructs, in bytes."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if isinstance(leaf.sharding, NamedSharding) else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


# --- programs --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Program:
    """A jitted function with its abstract arguments; `resident` = state bytes (per chip) that
    live in HBM during the program without being its arguments."""

    name: str
    lower: Callable[[], Any]
    resident: int = 0


@dataclasses.dataclass
class Row:
    name: str
    arguments: int = 0
    temporaries: int = 0
    outputs: int = 0
    aliased: int = 0
    resident: int = 0
    flops: float = 0.0
    bytes_accessed: float = 0.0
    seconds: float = 0.0
    compile_seconds: float = 0.0
    mosaic_calls: int = 0  # Pallas TPU kernels (tpu_custom_call) in the compiled program
    error: str = ""

    @property
    def total(self) -> int:
        return self.arguments + self.temporaries + self.outputs - self.aliased + self.resident


@dataclasses.dataclass
class Plan:
    accelerator: str
    chip: Chip
    mesh: dict[str, int]
    model: str
    attention_backend: str
    hbm_bytes: int
    rows: list[Row]
    # XLA's cost analysis counts a loop body once: with nn.scan over layers, FLOPs, bytes and the
    # roofline time cover one layer of each scanned stack (undercounts; memory is exact).
    scanned_layers: bool = False

    def fits(self, row: Row) -> bool:
        return not row.error and row.total <= self.hbm_bytes

    def failure(self) -> str | None:
        """The first program that does not compile or does not fit, described; None if all do."""
        for row in self.rows:
            if row.error:
                return f"program {row.name} does not compile: {row.error}"
            if not self.fits(row):
                return (f"program {row.name} does not fit: {row.total / GIB:.2f} GiB per chip > "
                        f"{self.hbm_bytes / GIB:.2f} GiB HBM")
        return None

    def to_json(self) -> dict:
        return {
            "accelerator": self.accelerator, "chip": dataclasses.asdict(self.chip), "mesh": self.mesh,
            "model": self.model, "attention_backend": self.attention_backend, "hbm_bytes": self.hbm_bytes,
            "ok": self.failure() is None, "failure": self.failure(),
            "cost_counts_one_scanned_layer": self.scanned_layers,
            "programs": [{**dataclasses.asdict(r), "total": r.total, "fits": self.fits(r)} for r in self.rows],
        }

    def table(self) -> str:
        head = (f"{self.accelerator} ({self.chip.generation}, {len_devices(self.mesh)} chips, "
                f"{self.hbm_bytes / GIB:.1f} GiB HBM, {self.chip.peak_flops / 1e12:.0f} TFLOP/s, "
                f"{self.chip.hbm_bandwidth / 1e9:.0f} GB/s), mesh {self.mesh}, model {self.model}, "
                f"attention {self.attention_backend}; memory in GiB per chip")
        cols = ("program", "args", "temps", "outputs", "alias", "resident", "total", "HBM %", "fits", "GFLOP",
                "GB", "roofline ms", "compile s")
        if self.scanned_layers:
            head += ("\nnote: scan_layers=True: XLA's cost analysis counts each scanned layer stack's body once, so "
                     "GFLOP, GB and roofline ms are undercounts (memory columns are exact)")
        lines = [head, " | ".join(cols)]
        for r in self.rows:
            if r.error:
                lines.append(f"{r.name} | FAILED: {r.error}")
                continue
            lines.append(" | ".join((
                r.name, *(f"{v / GIB:.3f}" for v in (r.arguments, r.temporaries, r.outputs, r.aliased, r.resident,
                                                     r.total)),
                f"{100 * r.total / self.hbm_bytes:.1f}", "yes" if self.fits(r) else "NO", f"{r.flops / 1e9:.3g}",
                f"{r.bytes_accessed / 1e9:.3g}", f"{r.seconds * 1e3:.3g}", f"{r.compile_seconds:.1f}")))
        return "\n".join(lines)


def len_devices(mesh: dict[str, int]) -> int:
    return math.prod(mesh.values())


def _programs(config: RunConfig, run: train.Run) -> list[Program]:
    """Every jitted program of a run with abstract, sharded arguments (train.py's shapes and shardings)."""
    model, mesh = run.model, run.mesh
    rep = parallel.replicated(mesh)
    params = with_shardings(_abstract_params(model), run.param_shardings)
    params_bytes = per_chip_bytes(params)
    longest = max(config.data.length_buckets)
    programs: list[Program] = []
    lora = config.lora.config
    adapters, base = None, None
    if lora is not None:
        specs = train.adapter_specs(run, lora)
        lora_shardings = train._state_shardings(run, optax.identity(), reference=False, lora=lora)
        adapters = with_shardings(lora_lib.adapter_shapes(specs, lora.rank), lora_shardings.params)
        # the frozen base (its adapted kernels quantised under lora.base_dtype)
        base = with_shardings(jax.eval_shape(lambda p: lora_lib.quantize_base(p, specs, lora.base_dtype), params),
                              lora_shardings.base)
    trainable = params if lora is None else adapters
    # bytes of the train-state arguments of a loss program: the trainable params (+ the frozen base)
    loss_arg_bytes = params_bytes if lora is None else per_chip_bytes(adapters) + per_chip_bytes(base)

    def state_of(optimizer, reference: bool, seed: int) -> Any:
        shapes = jax.eval_shape(lambda p, a: train.initial_state(p, optimizer, seed, reference=reference, adapters=a),
                                params if lora is None else base, adapters)
        return with_shardings(shapes, train._state_shardings(run, optimizer, reference=reference, lora=lora))

    if config.sft.steps > 0:
        optimizer = train.sft_optimizer(config)
        state = state_of(optimizer, False, config.seed)
        batch = abstract_batch(config, model, mesh, config.sft.batch_size, longest, sft=True)
        denominator = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
        weight = float(config.sft.region_attention_weight)  # region-attention supervision: its [B, H, L, L] too
        layers = region_supervision.layer_indices(config.sft.region_attention_layers, model.text.num_layers) \
            if weight > 0 else ()
        programs.append(Program("sft_grads", lambda b=batch, d=denominator: sft_grads.lower(
            trainable, b.inputs, b.loss_mask, d, base, None, b.region_mask if weight > 0 else None, config=model,
            lora=lora, grad_shardings=parallel.sharding_leaves(trainable), region_weight=weight,
            region_layers=layers), per_chip_bytes(state) - loss_arg_bytes))
        apply = train._make_apply(optimizer, train._state_shardings(run, optimizer, reference=False, lora=lora))
        programs.append(Program("sft_update", lambda a=apply, s=state: a.lower(s, trainable)))

    if config.grpo.steps > 0:
        g, _ = train.grpo_settings(config)
        optimizer = train.grpo_optimizer(config)
        reference = g.beta != 0
        state = state_of(optimizer, reference, config.seed + 1)
        state_bytes = per_chip_bytes(state)
        rows = config.grpo.micro_batch_prompts * g.group_size
        micro = config.grpo.prompts_per_step // config.grpo.micro_batch_prompts
        batch = abstract_batch(config, model, mesh, rows, longest, sft=False)
        region_mask, prompt = batch.region_mask, batch.inputs
        steps = g.sampling.max_new_tokens
        rng = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=rep)
        completion = jax.ShapeDtypeStruct((rows, steps), jnp.int32, sharding=parallel.batch_sharding(
            mesh, (rows, steps)))
        mask = jax.ShapeDtypeStruct((rows, steps), jnp.bool_, sharding=completion.sharding)
        logp = jax.ShapeDtypeStruct((rows, steps), jnp.float32, sharding=completion.sharding)
        advantages = jax.ShapeDtypeStruct((rows,), jnp.float32, sharding=parallel.batch_sharding(mesh, (rows,)))
        denominator = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
        temperature = grpo_lib.score_temperature(g)
        chunk = g.vocab_chunk
        ids = {"eos_token_id": model.eos_token_id, "pad_token_id": model.pad_token_id}
        # resident while sampling/scoring: the state less the params passed in (under LoRA those are
        # the merged transient, so the whole state, base included, stays resident)
        not_params = state_bytes - params_bytes if lora is None else state_bytes
        length = prompt.input_ids.shape[1] + steps

        def prefill_program(p, inputs):
            logits, cache, _ = prefill(p, model, inputs, length)
            return logits[:, -1], cache

        prefill_jit = jax.jit(prefill_program)
        cache = jax.eval_shape(prefill_program, params, prompt)[1]
        cache = with_shardings(cache, jax.tree.map(lambda _: None, cache))
        decode_jit = jax.jit(lambda p, token, c: decode_step(p, model, token, c)[:2])
        token = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=parallel.batch_sharding(mesh, (rows,)))
        programs += [
            Program("sampler_prefill", lambda: prefill_jit.lower(params, prompt), not_params),
            Program("sampler_decode", lambda: decode_jit.lower(params, token, _unsharded(cache)), not_params),
            Program("sampler_generate", lambda: generate.lower(params, prompt, rng, config=model,
                                                               sampling=g.sampling, **ids), not_params),
            Program("score_policy", lambda: score.lower(
                params, prompt, completion, mask, region_mask, config=model, mass_layers=g.layers(model),
                temperature=temperature, vocab_chunk=chunk), not_params),
        ]
        if reference:
            ref = state.ref_params if lora is None else state.base  # LoRA: the base, adapters off
            # LoRA: the merged policy params stay alive next to the state while the reference scores
            programs.append(Program("score_reference", lambda: score.lower(
                ref, prompt, completion, mask, config=model, temperature=temperature,
                vocab_chunk=chunk), state_bytes - per_chip_bytes(ref) + (0 if lora is None else params_bytes)))
        accumulator = per_chip_bytes(trainable) if micro > 1 else 0
        truncated = jax.ShapeDtypeStruct((rows,), jnp.bool_, sharding=advantages.sharding)
        rollout = Rollout(prompt, completion, mask, logp, logp if reference else None, advantages, truncated, mask)
        programs.append(Program("grpo_loss_grads", lambda: grpo_lib.loss_grads.lower(
            trainable, rollout, denominator, base, config=model, grpo=g,
            grad_shardings=parallel.sharding_leaves(trainable)),
            state_bytes - loss_arg_bytes + accumulator))
        apply = train._make_apply(optimizer, train._state_shardings(run, optimizer, reference=reference, lora=lora))
        programs.append(Program("grpo_update", lambda: apply.lower(state, trainable)))
        if lora is not None:
            programs.append(Program("lora_merge", lambda: grpo_lib._merged.lower(base, adapters, lora.scale),
                                    state_bytes - loss_arg_bytes))
    return programs


def _abstract_params(model: Any) -> Any:
    return jax.eval_shape(functools.partial(family_of(model).init_params, model), jax.random.key(0))


def _unsharded(tree: Any) -> Any:
    """ShapeDtypeStructs without a sharding (the compiler picks, as for an intermediate)."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), tree)


def _cost(compiled) -> tuple[float, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    cost = cost or {}
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def _compile(program: Program, mesh: jax.sharding.Mesh, chip: Chip) -> Row:
    row = Row(program.name, resident=program.resident)
    t0 = time.perf_counter()
    try:
        # Mosaic lowering reads the chip generation from the default device: make it the target's.
        # The mesh context is the one training sets: the Pallas kernels shard_map over it.
        with jax.default_device(mesh.devices.flat[0]), jax.set_mesh(mesh):
            compiled = program.lower().compile()
    except Exception as e:  # noqa: BLE001 - the compiler's own words name the problem
        row.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400] if str(e).strip() else ''}"
        row.compile_seconds = time.perf_counter() - t0
        return row
    row.compile_seconds = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    row.arguments = int(memory.argument_size_in_bytes)
    row.temporaries = int(memory.temp_size_in_bytes)
    row.outputs = int(memory.output_size_in_bytes)
    row.aliased = int(memory.alias_size_in_bytes)
    row.flops, row.bytes_accessed = _cost(compiled)
    row.mosaic_calls = compiled.as_text().count("tpu_custom_call")
    row.seconds = max(row.flops / chip.peak_flops, row.bytes_accessed / chip.hbm_bandwidth)
    return row


def plan(config: ml_collections.ConfigDict | RunConfig, accelerator: str, *, hbm_gib: float | None = None,
         programs: Sequence[str] = (), log: Callable[[str], None] | None = None) -> Plan:
    """Compiles every program of the run `config` for `accelerator` (see the module doc).

    Args:
      config: a run config (configs/grpo.py and its overrides).
      accelerator: a key of `ACCELERATORS`, e.g. "v5p-8".
      hbm_gib: HBM per chip in GiB instead of the chip's (to plan for headroom).
      programs: compile only these program names (default: all).
      log: called with a line per compiled program (progress).

    Raises:
      ValueError: an unknown accelerator, program name, or a bad config field (named).
    """
    config = validate_config(config, check_files=False)
    backend = config.model.attention_backend or "pallas_tpu"  # what a TPU run picks
    config = config.replace(model=dataclasses.replace(config.model, attention_backend=backend))
    devices, chip = topology_devices(accelerator)
    run = train.layout(config, get_preset(config.model.preset), devices=devices)
    todo = _programs(config, run)
    known = [p.name for p in todo]
    unknown = sorted(set(programs) - set(known))
    if unknown:
        raise ValueError(f"--programs: {unknown} are not programs of this run; choose from {known}")
    hbm = chip.hbm_bytes if hbm_gib is None else int(hbm_gib * GIB)
    rows = []
    for program in todo:
        if programs and program.name not in programs:
            continue
        row = _compile(program, run.mesh, chip)
        rows.append(row)
        if log:
            log(f"{row.name}: FAILED after {row.compile_seconds:.1f}s: {row.error}" if row.error else
                f"{row.name}: compiled in {row.compile_seconds:.1f}s, {row.total / GIB:.2f} GiB per chip "
                f"({'fits' if row.total <= hbm else 'does NOT fit'}), {row.flops / 1e9:.4g} GFLOP, "
                f"{row.bytes_accessed / 1e9:.4g} GB")
    by_name = {r.name: r for r in rows}
    if {"sampler_generate", "sampler_prefill", "sampler_decode"} <= set(by_name):
        steps = config.grpo.max_new_tokens
        by_name["sampler_generate"].seconds = (by_name["sampler_prefill"].seconds
                                               + steps * by_name["sampler_decode"].seconds)
    mesh = {k: int(v) for k, v in run.mesh.shape.items()}
    return Plan(accelerator, chip, mesh, config.model.preset, config.model.attention_backend, hbm, rows,
                scanned_layers=run.model.scan_layers)


# --- command line ----------------------------------------------------------------------------------

_CONFIG = train._CONFIG  # the same --config flag (and --config.* overrides) as training
_TOPOLOGY = flags.DEFINE_string("topology", None, f"Cloud TPU accelerator type: {', '.join(ACCELERATORS)}")
_JSON = flags.DEFINE_bool("json", False, "Print the plan as one JSON object instead of a table.")
_HBM = flags.DEFINE_float("hbm_gib", None, "HBM per chip in GiB instead of the chip's (headroom planning).")
_PROGRAMS = flags.DEFINE_list("programs", [], "Compile only these programs (default: all).")
_VERBOSE = train._VERBOSE  # --verbose: tracebacks


def main(argv: list[str]) -> None:
    """The command line (`cli` convention): exit 2 with one `error:` line for a bad topology or
    config, 1 naming the first program that does not compile or fit; `--verbose` shows tracebacks."""
    from sif_jax.cli import USAGE_STATUS, fail
    from sif_jax.cli import run_cli as run_command

    del argv
    if _CONFIG.value is None or _TOPOLOGY.value is None:
        fail("--config and --topology are required, e.g. --config=configs/grpo.py --topology=v5p-8 "
             "(see python -m sif_jax.plan --helpfull)", USAGE_STATUS)
    result = run_command(
        lambda: plan(_CONFIG.value, _TOPOLOGY.value, hbm_gib=_HBM.value, programs=_PROGRAMS.value,
                     log=None if _JSON.value else lambda line: print(line, file=sys.stderr, flush=True)),
        _VERBOSE.value, usage_errors=(ValueError,))
    print(json.dumps(result.to_json(), indent=2) if _JSON.value else result.table(), flush=True)
    failure = result.failure()
    if failure:
        fail(failure)


def _parse_flags(argv: list[str]) -> list[str]:
    """A bad flag or config override is one `error:` line naming the closest field (exit 2)."""
    from sif_jax.cli import parse_config_flags

    return parse_config_flags(argv, "sif_jax.plan")


def run_cli() -> None:
    # Only compile-only TPU devices are needed: never take this host's accelerators.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    with contextlib.suppress(AttributeError):
        jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run_cli()
