"""Quantised frozen base (`lora.base_dtype`, QLoRA-style): per-output-channel absmax int8 / float8
against a NumPy oracle, and the SFT / GRPO LoRA losses over a quantised base equal those over its
dequantised float32 copy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from sif_jax import lora as lora_lib
from sif_jax.infer.sampler import SamplingConfig
from sif_jax.infer.scoring import score
from sif_jax.model.layout import to_layout
from sif_jax.model.vlm import abstract_boxed_params
from sif_jax.rl.grpo import GRPOConfig, loss_grads
from sif_jax.rl.types import Rollout
from sif_jax.run_config import validate_config
from sif_jax.sft import sft_grads
from tests.lora.test_lora import get, grpo_run_config, random_adapters, tiny_hf  # noqa: F401 (fixture)


def numpy_quantize(w, n_lead, n_in, qmax):
    """The module doc's formula in float64 NumPy: (q, s) with s = absmax over the input dims / qmax."""
    w = np.asarray(w, np.float64)
    absmax = np.abs(w).max(axis=tuple(range(n_lead, n_lead + n_in)), keepdims=True)
    s = np.where(absmax > 0, absmax, 1.0) / qmax
    return w / s, s


@pytest.mark.parametrize("shape,n_lead,n_in", [((16, 12), 0, 1), ((3, 4, 8, 10), 1, 2), ((2, 12, 4, 6), 1, 1)])
def test_int8_is_the_absmax_per_output_channel_formula(shape, n_lead, n_in):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.01, 3.0, shape[-1]).astype(np.float32)
    w[..., 0] = 0.0  # an all-zero output channel
    qk = lora_lib.quantize_kernel(jnp.asarray(w), n_lead, n_in, "int8")
    ratio, s = numpy_quantize(w, n_lead, n_in, 127.0)
    assert qk["quantized"].dtype == jnp.int8 and qk["quantized"].shape == w.shape
    assert qk["scale"].dtype == jnp.float32 and qk["scale"].shape == s.shape
    np.testing.assert_allclose(np.asarray(qk["scale"]), s, rtol=1e-6)
    q = np.asarray(qk["quantized"]).astype(np.int64)
    # round to nearest (ties may differ by float32 division rounding: allow one step there)
    assert np.abs(q - np.rint(ratio)).max() <= 1 and np.mean(q == np.rint(ratio)) > 0.999
    assert np.abs(q).max() <= 127
    back = np.asarray(lora_lib.dequantize_kernel(qk), np.float64)
    # |W~ - W| <= s / 2 (+ float32 rounding), exact zeros stay zero
    assert np.all(np.abs(back - w) <= s / 2 * (1 + 1e-4) + 1e-7)
    assert np.all(back[..., 0] == 0.0)


def test_float8_is_the_absmax_formula_rounded_to_e4m3fn():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 24)).astype(np.float32)
    qk = lora_lib.quantize_kernel(jnp.asarray(w), 0, 1, "float8_e4m3fn")
    ratio, s = numpy_quantize(w, 0, 1, 448.0)
    want = ratio.astype(np.float32).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    got = np.asarray(qk["quantized"]).astype(np.float64)
    assert qk["quantized"].dtype == jnp.float8_e4m3fn
    assert np.mean(got == want) > 0.999
    back = np.asarray(lora_lib.dequantize_kernel(qk), np.float64)
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 of |W| (normal range) or 2^-10 * s (subnormal)
    assert np.all(np.abs(back - w) <= np.maximum(np.abs(w) * 2.0**-4, s * 2.0**-9) * (1 + 1e-5))


def test_bad_base_dtype_is_named():
    with pytest.raises(ValueError, match="lora.base_dtype: 'int4'"):
        lora_lib.quantize_kernel(jnp.ones((2, 2)), 0, 1, "int4")
    c = grpo_run_config()
    c.lora.rank = 4
    c.lora.base_dtype = "int4"
    with pytest.raises(ValueError, match="lora.base_dtype"):
        validate_config(c, check_files=False)
    c.lora.base_dtype = "int8"
    validate_config(c, check_files=False)
    assert lora_lib.from_run_config(c).base_dtype == "int8"


@pytest.mark.parametrize("scan", [False, True])
def test_quantize_base_touches_only_the_adapted_kernels(tiny_hf, scan):  # noqa: F811
    config, params, _ = tiny_hf
    config = config.replace(scan_layers=scan)
    params = to_layout(params, config)
    lora = lora_lib.LoraConfig(rank=4, alpha=8.0, base_dtype="int8")
    specs = lora_lib.adapter_specs(abstract_boxed_params(config), lora)
    base = lora_lib.quantize_base(params, specs, "int8")
    flat_p = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    quantized = 0
    for keys, leaf in jax.tree_util.tree_flatten_with_path(base)[0]:
        path = "/".join(str(k.key) for k in keys)
        kernel = path.rsplit("/", 1)[0]
        if kernel in specs:
            quantized += 1
            assert leaf.dtype in (jnp.int8, jnp.float32)
        else:
            assert keys in flat_p and leaf is flat_p[keys]
    assert quantized == 2 * len(specs)
    deq = lora_lib.dequantize_params(base)
    assert jax.tree.structure(deq) == jax.tree.structure(params)
    for path in specs:
        w, s = np.asarray(get(params, path)), np.asarray(get(base, path)["scale"])
        assert np.all(np.abs(np.asarray(get(deq, path)) - w) <= s / 2 * (1 + 1e-4) + 1e-7), path


def dequantized_f32(base):
    """The NumPy dequantisation float32(q) * s of every quantised kernel: a plain params tree."""
    def walk(node):
        if lora_lib.is_quantized(node):
            return jnp.asarray(np.asarray(node["quantized"]).astype(np.float32) * np.asarray(node["scale"]))
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return node
    return walk(base)


@pytest.mark.parametrize("base_dtype", ["int8", "float8_e4m3fn"])
def test_sft_loss_over_a_quantised_base_is_that_of_its_dequantised_copy(tiny_hf, hf_tiny_io, base_dtype):  # noqa: F811
    config, params, prompt = tiny_hf
    lora = lora_lib.LoraConfig(rank=4, alpha=8.0, base_dtype=base_dtype)
    specs = lora_lib.adapter_specs(abstract_boxed_params(config), lora)
    adapters = random_adapters(specs, 4)
    base = lora_lib.quantize_base(params, specs, base_dtype)
    loss_mask = jnp.asarray(hf_tiny_io["attention_mask"], bool)
    denominator = jnp.asarray(10.0)
    grads, (num, *_) = sft_grads(adapters, prompt, loss_mask, denominator, base, config=config, lora=lora)
    plain = lora_lib.LoraConfig(rank=4, alpha=8.0)
    grads_f32, (num_f32, *_) = sft_grads(adapters, prompt, loss_mask, denominator, dequantized_f32(base), config=config,
                                        lora=plain)
    _, (num_orig, *_) = sft_grads(adapters, prompt, loss_mask, denominator, params, config=config, lora=plain)
    assert abs(float(num) - float(num_f32)) <= 1e-5 * max(1.0, abs(float(num_f32)))
    assert float(num) != float(num_orig)  # the quantisation is really in the loss
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_f32), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)


def test_grpo_loss_and_reference_over_an_int8_base_are_those_of_its_dequantised_copy(tiny_hf):  # noqa: F811
    config, params, prompt = tiny_hf
    lora = lora_lib.LoraConfig(rank=4, alpha=8.0, base_dtype="int8")
    specs = lora_lib.adapter_specs(abstract_boxed_params(config), lora)
    adapters = random_adapters(specs, 4, seed=1)
    base = lora_lib.quantize_base(params, specs, "int8")
    deq = dequantized_f32(base)
    rows, steps = prompt["input_ids"].shape[0], 5
    rng = np.random.default_rng(0)
    completion = jnp.asarray(rng.integers(10, 280, (rows, steps)), jnp.int32)
    mask = jnp.asarray(np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool))
    old = jnp.asarray(rng.normal(-5.0, 0.3, (rows, steps)), jnp.float32)
    ref = jnp.asarray(rng.normal(-5.0, 0.3, (rows, steps)), jnp.float32)
    adv = jnp.asarray([0.7, -0.7], jnp.float32)
    kw = dict(beta=0.04, share_prompts=False, sampling=SamplingConfig(max_new_tokens=steps, temperature=1.0),
              vocab_chunk=64)
    rollout = Rollout.create(prompt, completion, mask, old, ref, adv, loss_mask=mask)
    _, (num, _, _) = loss_grads(adapters, rollout, jnp.asarray(7.0), base, config=config,
                                grpo=GRPOConfig(lora=lora, **kw))
    plain = lora_lib.LoraConfig(rank=4, alpha=8.0)
    _, (num_f32, _, _) = loss_grads(adapters, rollout, jnp.asarray(7.0), deq, config=config,
                                    grpo=GRPOConfig(lora=plain, **kw))
    assert abs(float(num) - float(num_f32)) <= 1e-5 * max(1.0, abs(float(num_f32)))
    # the adapter-off reference scores with the quantised base, dequantised inside `score`
    got = score(base, prompt, completion, mask, config=config, vocab_chunk=64).logprobs
    want = score(deq, prompt, completion, mask, config=config, vocab_chunk=64).logprobs
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_quantized_shardings_drop_the_input_axes_of_the_scale():
    from sif_jax.model.config import get_preset

    config = get_preset("tiny").replace(scan_layers=True)
    lora = lora_lib.LoraConfig(rank=4, alpha=8.0)
    specs = lora_lib.adapter_specs(abstract_boxed_params(config), lora)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tensor"))
    path = next(p for p in specs if p.endswith("q_proj/kernel"))
    spec = specs[path]
    pspec = jax.sharding.PartitionSpec(*(None, "fsdp", "tensor", None)[:len(spec.shape)])
    shardings = lora_lib.unflatten({path: jax.sharding.NamedSharding(mesh, pspec)})
    out = lora_lib.quantized_shardings(shardings, {path: spec}, "int8")
    node = get(out, path)
    assert node["quantized"].spec == pspec
    want = list(pspec) + [None] * (len(spec.shape) - len(pspec))
    for i in range(spec.n_lead, spec.n_lead + spec.n_in):
        want[i] = None
    assert tuple(node["scale"].spec) == tuple(want)


def test_lora_training_over_an_int8_base_runs_and_checkpoints_the_quantised_base(tmp_path):
    import json
    import math

    import orbax.checkpoint as ocp

    from sif_jax import train
    from sif_jax.checkpoint import latest_run_checkpoint, load_run_params
    from tests.lora.test_lora_train import lora_config

    c = lora_config(str(tmp_path / "run"))
    c.grpo.steps = 1
    c.lora.base_dtype = "int8"
    train.run(c)
    with open(tmp_path / "run" / "sft_metrics.jsonl") as f:
        sft = [json.loads(line) for line in f]
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        grpo = [json.loads(line) for line in f]
    assert len(sft) == 2 and all(math.isfinite(r["sft_loss"]) for r in sft)
    # fresh adapters (B = 0): the policy is the dequantised base, which is also the reference
    assert len(grpo) == 1 and grpo[0]["kl_mean"] == 0.0 and math.isfinite(grpo[0]["loss"])
    directory, step = latest_run_checkpoint(str(tmp_path / "run"))
    manager = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                    item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                   "meta": ocp.JsonCheckpointHandler()},
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    try:
        saved = manager.item_metadata(step)["state"]
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    finally:
        manager.close()
    assert meta["lora"]["base_dtype"] == "int8"
    q = saved["base"]["text"]["layers_0"]["q_proj"]["kernel"]
    assert set(q) == {"quantized", "scale"} and q["quantized"].dtype == np.int8
    assert saved["base"]["text"]["embed_tokens"]["embedding"].dtype == np.float32  # not adapted: as is
    # inference loads the merged model: dequantised base + adapters, plain float32 kernels
    _, params, _ = load_run_params(str(tmp_path / "run"))
    assert params["text"]["layers_0"]["q_proj"]["kernel"].dtype == jnp.float32
