"""LoRA adapters (sif_jax.lora): targets, merge against a NumPy oracle, sharding axes, and the
adapters' gradient against the full model's gradient projected onto the low-rank factors."""

import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from sif_jax import lora as lora_lib
from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.infer.sampler import SamplingConfig
from sif_jax.model.config import get_preset
from sif_jax.model.layout import to_layout
from sif_jax.model.vlm import abstract_boxed_params, init_params, prepare_inputs
from sif_jax.parallel import DEFAULT_RULES
from sif_jax.rl.grpo import GRPOConfig, TrainState, loss_grads, reference_params
from sif_jax.rl.types import Rollout
from sif_jax.run_config import validate_config
from sif_jax.sft import sft_grads

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj")


def grpo_run_config():
    spec = importlib.util.spec_from_file_location("grpo_config", os.path.join(ROOT, "configs", "grpo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def random_adapters(specs, rank, seed=0, b_scale=0.05):
    """Adapters with a non-zero B (fresh ones have B = 0, where dL/dA vanishes)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, spec in specs.items():
        a_shape, b_shape = spec.factor_shapes(rank)
        flat[path] = {"a": jnp.asarray(rng.standard_normal(a_shape) * 0.1, jnp.float32),
                      "b": jnp.asarray(rng.standard_normal(b_shape) * b_scale, jnp.float32)}
    return lora_lib.unflatten(flat)


def get(tree, path):
    for k in path.split("/"):
        tree = tree[k]
    return tree


# --- targets, config --------------------------------------------------------------------------------


def test_run_config_default_targets_are_the_module_default():
    assert tuple(grpo_run_config().lora.targets) == lora_lib.DEFAULT_TARGETS
    assert grpo_run_config().lora.rank == 0 and lora_lib.from_run_config(grpo_run_config()) is None


@pytest.mark.parametrize("scan", [False, True])
def test_default_targets_are_every_language_linear_and_nothing_else(scan):
    model = get_preset("tiny").replace(scan_layers=scan)
    specs = lora_lib.adapter_specs(abstract_boxed_params(model), lora_lib.LoraConfig(rank=4, alpha=8.0))
    n = model.text.num_layers
    layers = ["text/layers"] if scan else [f"text/layers_{i}" for i in range(n)]
    assert sorted(specs) == sorted(f"{layer}/{lin}/kernel" for layer in layers for lin in LINEARS)
    q, o = specs[f"{layers[0]}/q_proj/kernel"], specs[f"{layers[0]}/o_proj/kernel"]
    assert (q.n_lead, q.n_in, o.n_lead, o.n_in) == (int(scan), 1, int(scan), 2)


def test_adapters_follow_the_logical_axes_of_their_kernel():
    specs = lora_lib.adapter_specs(abstract_boxed_params(get_preset("tiny")), lora_lib.LoraConfig(rank=4, alpha=8.0))
    axes = lora_lib.adapter_logical_axes(specs)
    r = lora_lib.RANK_AXIS
    assert axes["text"]["layers_0"]["q_proj"]["kernel"] == {"a": PartitionSpec("embed", r),
                                                           "b": PartitionSpec(r, "heads", "head_dim")}
    assert axes["text"]["layers_0"]["o_proj"]["kernel"] == {"a": PartitionSpec("heads", "head_dim", r),
                                                           "b": PartitionSpec(r, "embed")}
    assert axes["text"]["layers_1"]["mlp"]["down_proj"]["kernel"] == {"a": PartitionSpec("mlp", r),
                                                                     "b": PartitionSpec(r, "embed")}
    scanned = lora_lib.adapter_specs(abstract_boxed_params(get_preset("tiny").replace(scan_layers=True)),
                                     lora_lib.LoraConfig(rank=4, alpha=8.0))
    assert scanned["text/layers/mlp/up_proj/kernel"].factor_axes() == (PartitionSpec("layers", "embed", r),
                                                                       PartitionSpec("layers", r, "mlp"))


def test_every_factor_is_split_over_fsdp_once():
    """On an FSDP x tensor mesh each factor holds 'fsdp' exactly once: through the kernel axis it
    shares with its kernel when that axis is on fsdp, else through the rank axis."""
    specs = lora_lib.adapter_specs(abstract_boxed_params(get_preset("qwen2_5_vl_7b")),
                                   lora_lib.LoraConfig(rank=64, alpha=128.0))
    for spec in specs.values():
        for logical in spec.factor_axes():
            mesh_axes = nn.logical_to_mesh_axes(tuple(logical), DEFAULT_RULES)
            flat = [a for axes in mesh_axes if axes for a in ((axes,) if isinstance(axes, str) else axes)]
            assert flat.count("fsdp") == 1, (spec.path, logical, mesh_axes)


def test_bad_targets_are_named():
    boxed = abstract_boxed_params(get_preset("tiny"))
    with pytest.raises(ValueError, match=r"lora.targets: 'nothing_here' matches no kernel"):
        lora_lib.adapter_specs(boxed, lora_lib.LoraConfig(4, 8.0, targets=("nothing_here",)))
    with pytest.raises(ValueError, match="patch_embed.*convolution"):
        lora_lib.adapter_specs(boxed, lora_lib.LoraConfig(4, 8.0, targets=("patch_embed",)))
    vision = lora_lib.adapter_specs(boxed, lora_lib.LoraConfig(4, 8.0, targets=(r"^visual/blocks_0/(qkv|proj)/",)))
    assert sorted(vision) == ["visual/blocks_0/proj/kernel", "visual/blocks_0/qkv/kernel"]


@pytest.mark.parametrize("field,value,match", [
    ("rank", -1, r"config.lora.rank=-1"), ("alpha", 0.0, r"config.lora.alpha=0.0"),
    ("dropout", 1.0, r"config.lora.dropout=1.0"), ("targets", ("(",), r"config.lora.targets='\('"),
])
def test_bad_lora_config_is_named(field, value, match):
    c = grpo_run_config()
    c.lora.rank = 8
    c.lora[field] = value
    with pytest.raises(ValueError, match=match):
        validate_config(c, check_files=False)


def test_init_adapter_must_be_a_peft_directory(tmp_path):
    c = grpo_run_config()
    c.lora.rank = 8
    c.lora.init_adapter = str(tmp_path)
    with pytest.raises(ValueError, match="config.lora.init_adapter=.*no adapter_config.json"):
        validate_config(c)


# --- merge -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scan", [False, True])
def test_merge_matches_numpy_and_leaves_the_rest(scan):
    model = get_preset("tiny").replace(scan_layers=scan)
    base = init_params(model, jax.random.key(0))
    lora = lora_lib.LoraConfig(rank=3, alpha=6.0)
    specs = lora_lib.adapter_specs(abstract_boxed_params(model), lora)
    adapters = random_adapters(specs, 3)
    merged = lora_lib.merge(base, adapters, lora.scale)
    for path, spec in specs.items():
        w, ab = np.asarray(get(base, path), np.float64), lora_lib.flatten(adapters)[path]
        a, b = np.asarray(ab["a"], np.float64), np.asarray(ab["b"], np.float64)
        lead = spec.lead_shape
        ins, outs = int(np.prod(spec.in_shape)), int(np.prod(spec.out_shape))
        a2, b2 = a.reshape(*lead, ins, 3), b.reshape(*lead, 3, outs)
        want = w + 2.0 * (a2 @ b2).reshape(w.shape)
        np.testing.assert_allclose(np.asarray(get(merged, path)), want, rtol=1e-6, atol=1e-7)
    assert get(merged, "text/embed_tokens/embedding") is get(base, "text/embed_tokens/embedding")
    assert lora_lib.merge(base, None, 2.0) is base


def test_fresh_adapters_start_at_the_base():
    model = get_preset("tiny")
    base = init_params(model, jax.random.key(0))
    lora = lora_lib.LoraConfig(rank=8, alpha=16.0)
    specs = lora_lib.adapter_specs(abstract_boxed_params(model), lora)
    adapters = lora_lib.init_adapters(specs, 8, jax.random.key(1))
    q = lora_lib.flatten(adapters)["text/layers_0/q_proj/kernel"]
    bound = 1 / np.sqrt(model.text.hidden_size)
    assert q["a"].shape == (model.text.hidden_size, 8) and 0 < np.abs(q["a"]).max() <= bound
    assert not np.asarray(q["b"]).any()
    merged = lora_lib.merge(base, adapters, lora.scale)
    for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(base), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert lora_lib.count(adapters) == sum(
        np.prod(s.factor_shapes(8)[0]) + np.prod(s.factor_shapes(8)[1]) for s in specs.values())


def test_reference_of_a_lora_state_is_the_base_itself():
    base = {"w": jnp.ones(3)}
    state = TrainState(step=jnp.zeros((), jnp.int32), params={"x": jnp.zeros(1)}, ref_params=None, opt_state=None,
                       rng=jnp.zeros(2, jnp.uint32), base=base)
    assert reference_params(state, GRPOConfig(lora=lora_lib.LoraConfig(8, 16.0))) is base


def test_dropout_drops_whole_input_rows_of_a_and_rescales():
    a = jnp.ones((4, 1000, 8))
    out = np.asarray(lora_lib._dropout_a(a, 0.25, jax.random.key(0)))
    rows = out[..., 0]
    assert set(np.unique(out).tolist()) <= {0.0, np.float32(1 / 0.75).item()}
    assert (out == out[..., :1]).all()  # one draw per row, shared over the rank
    assert abs((rows == 0).mean() - 0.25) < 0.03


# --- gradients -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hf(hf_tiny_dir, hf_tiny_io):
    config, params = load_hf_checkpoint(hf_tiny_dir)
    prompt = prepare_inputs(config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                            hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
    return config, jax.tree.map(jnp.asarray, params), {k: jnp.asarray(v) for k, v in prompt.items()}


def projected(full_grads, adapters, specs, scale):
    """dL/dA = s dL/dW_eff B^T, dL/dB = s A^T dL/dW_eff (float64 NumPy, per lead index)."""
    out = {}
    for path, spec in specs.items():
        g = np.asarray(get(full_grads, path), np.float64)
        ab = lora_lib.flatten(adapters)[path]
        a, b = np.asarray(ab["a"], np.float64), np.asarray(ab["b"], np.float64)
        lead, r = spec.lead_shape, a.shape[-1]
        ins, outs = int(np.prod(spec.in_shape)), int(np.prod(spec.out_shape))
        g2, a2, b2 = g.reshape(*lead, ins, outs), a.reshape(*lead, ins, r), b.reshape(*lead, r, outs)
        da = scale * g2 @ np.swapaxes(b2, -1, -2)
        db = scale * np.swapaxes(a2, -1, -2) @ g2
        out[path] = {"a": da.reshape(a.shape), "b": db.reshape(b.shape)}
    return out


def assert_projection(grads, full, adapters, specs, scale):
    want = projected(full, adapters, specs, scale)
    got = lora_lib.flatten(grads)
    assert sorted(got) == sorted(want)
    worst = 0.0
    for path in want:
        for k in "ab":
            g, w = np.asarray(got[path][k], np.float64), want[path][k]
            assert np.abs(w).max() > 0, (path, k)
            err = np.abs(g - w).max() / np.abs(w).max()
            worst = max(worst, err)
            assert err < 1e-4, (path, k, err)
    return worst


@pytest.mark.parametrize("scan", [False, True])
def test_sft_adapter_gradient_is_the_projected_full_gradient(tiny_hf, hf_tiny_io, scan):
    config, params, prompt = tiny_hf
    config = config.replace(scan_layers=scan)
    params = to_layout(params, config)
    lora = lora_lib.LoraConfig(rank=4, alpha=8.0)
    specs = lora_lib.adapter_specs(abstract_boxed_params(config), lora)
    adapters = random_adapters(specs, 4)
    batch = {**prompt, "loss_mask": jnp.asarray(hf_tiny_io["attention_mask"], bool)}
    denominator = jnp.asarray(10.0)
    grads, (num, *_) = sft_grads(adapters, batch, batch["loss_mask"], denominator, params, config=config, lora=lora)
    merged = lora_lib.merge(params, adapters, lora.scale)
    full, (num_full, *_) = sft_grads(merged, batch, batch["loss_mask"], denominator, config=config)
    np.testing.assert_allclose(float(num), float(num_full), rtol=1e-6)
    assert_projection(grads, full, adapters, specs, lora.scale)


def test_grpo_adapter_gradient_is_the_projected_full_gradient(tiny_hf):
    config, params, prompt = tiny_hf
    lora = lora_lib.LoraConfig(rank=4, alpha=8.0)
    specs = lora_lib.adapter_specs(abstract_boxed_params(config), lora)
    adapters = random_adapters(specs, 4, seed=1)
    rows, steps = prompt["input_ids"].shape[0], 5
    rng = np.random.default_rng(0)
    completion = jnp.asarray(rng.integers(10, 280, (rows, steps)), jnp.int32)
    mask = jnp.asarray(np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool))
    old = jnp.asarray(rng.normal(-5.0, 0.3, (rows, steps)), jnp.float32)
    ref = jnp.asarray(rng.normal(-5.0, 0.3, (rows, steps)), jnp.float32)
    adv = jnp.asarray([0.7, -0.7], jnp.float32)
    # Rows are distinct prompts (not G copies of one), so no shared-prompt pass.
    kw = dict(beta=0.04, share_prompts=False, sampling=SamplingConfig(max_new_tokens=steps, temperature=1.0),
              vocab_chunk=64, eps_low=0.999, eps_high=10.0)  # wide clip range: the surrogate is unclipped, so smooth
    rollout = Rollout.create(prompt, completion, mask, old, ref, adv, loss_mask=mask)
    grads, (num, _, _) = loss_grads(adapters, rollout, jnp.asarray(7.0), params, config=config,
                                    grpo=GRPOConfig(lora=lora, **kw))
    merged = lora_lib.merge(params, adapters, lora.scale)
    full, (num_full, _, _) = loss_grads(merged, rollout, jnp.asarray(7.0), config=config, grpo=GRPOConfig(**kw))
    np.testing.assert_allclose(float(num), float(num_full), rtol=1e-6)
    assert_projection(grads, full, adapters, specs, lora.scale)
