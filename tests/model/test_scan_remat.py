"""scan_layers / remat_policy: the same numbers as the unrolled, fully-stored model.

Oracles: the unrolled model without remat (itself checked against HF in test_hf_parity.py) and
the HF fixture's logits.
"""

import functools

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax import parallel
from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.model.cache import decode_step, prefill
from sif_jax.model.config import get_preset
from sif_jax.model.layout import is_stacked, stack_layers, to_layout, unstack_layers
from sif_jax.model.vlm import Qwen25VL, count_params, init_params, model_inputs, param_logical_axes, prepare_inputs

MASS_LAYERS = (0, 2)


def tiny_batch(config):
    """Two rows (one left-padded), one non-square image each with several vision windows, a
    region mask over part of each image, AdaptVis scales."""
    grid = np.array([[1, 8, 12], [1, 8, 12]])  # 4 x 6 merged cells; window 2 x 2 cells
    n_img = 24
    rng = np.random.default_rng(0)
    rows = []
    for pad in (0, 3):
        text = rng.integers(10, config.text.vocab_size, 7).tolist()
        rows.append([config.pad_token_id] * pad + [config.vision_start_token_id] + [config.image_token_id] * n_img
                    + [config.vision_end_token_id] + text[: 7 - pad] + [config.eos_token_id])
    ids = np.array(rows, np.int32)
    mask = (np.arange(ids.shape[1])[None] >= np.array([[0], [3]])).astype(np.int32)
    pixels = rng.normal(size=(int(np.prod(grid, axis=1).sum()), config.vision.patch_dim)).astype(np.float32)
    inputs = model_inputs(prepare_inputs(config, ids, mask, pixels, grid))
    region = (ids == config.image_token_id) & (np.arange(ids.shape[1])[None] % 3 == 0)
    scale = np.where(np.arange(ids.shape[1])[None] > 20, 1.5, 1.0).astype(np.float32).repeat(2, 0)
    return inputs, mask.astype(bool), {"region_mask": region, "visual_scale": scale}


@pytest.fixture(scope="module")
def tiny_setup():
    config = get_preset("tiny")
    params = init_params(config, jax.random.key(1))
    inputs, valid, extra = tiny_batch(config)
    return config, params, inputs, valid, extra


def _run(config, params, inputs, extra, **kw):
    return jax.jit(functools.partial(Qwen25VL(config).apply, **kw))({"params": params}, **inputs, **extra)


def test_scan_matches_unrolled_logits_masses_and_kv_on_tiny(tiny_setup):
    config, params, inputs, valid, extra = tiny_setup
    kw = dict(return_attention_mass=MASS_LAYERS, return_kv=True)
    ref_logits, ref_aux = _run(config, params, inputs, extra, **kw)
    scan_config = config.replace(scan_layers=True)
    scan_params = to_layout(params, scan_config)
    logits, aux = _run(scan_config, scan_params, inputs, extra, **kw)
    np.testing.assert_allclose(np.asarray(logits)[valid], np.asarray(ref_logits)[valid], atol=1e-5, rtol=0)
    assert sorted(aux["attention_mass"]) == list(MASS_LAYERS)
    for layer in MASS_LAYERS:
        for kind in ("region", "visual"):
            expected = np.asarray(ref_aux["attention_mass"][layer][kind])
            assert expected.max() > 0.01  # the masses are not trivially zero
            np.testing.assert_allclose(np.asarray(aux["attention_mass"][layer][kind]), expected, atol=1e-5)
    for got, expected in zip(aux["kv"], ref_aux["kv"], strict=True):
        assert got.shape == expected.shape == (config.text.num_layers, 2, inputs["input_ids"].shape[1], 2, 16)
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


def test_scan_without_masses_or_kv_returns_neither(tiny_setup):
    config, params, inputs, _, extra = tiny_setup
    scan_config = config.replace(scan_layers=True)
    _, aux = _run(scan_config, to_layout(params, scan_config), inputs, extra)
    assert aux["attention_mass"] == {} and "kv" not in aux


@pytest.fixture(scope="module")
def hf_loaded(hf_tiny_dir):
    return load_hf_checkpoint(hf_tiny_dir), load_hf_checkpoint(hf_tiny_dir, scan_layers=True)


def test_hf_fixture_loaded_with_scan_matches_hf_logits(hf_loaded, hf_tiny_io):
    (config, params), (scan_config, scan_params) = hf_loaded
    assert scan_config.scan_layers and is_stacked(scan_params)
    assert scan_params["text"]["layers"]["q_proj"]["kernel"].shape[0] == config.text.num_layers
    assert scan_params["visual"]["blocks"]["qkv"]["kernel"].shape[0] == config.vision.depth
    inputs = model_inputs(prepare_inputs(scan_config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                                         hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"]))
    valid = hf_tiny_io["attention_mask"].astype(bool)
    logits, _ = _run(scan_config, scan_params, inputs, {})
    unrolled, _ = _run(config, params, inputs, {})
    assert np.abs(np.asarray(logits) - hf_tiny_io["logits"])[valid].max() <= 1e-4
    np.testing.assert_allclose(np.asarray(logits)[valid], np.asarray(unrolled)[valid], atol=1e-5, rtol=0)


def test_kv_cache_decoding_with_scan_matches_unrolled(hf_loaded, hf_tiny_io):
    steps = 4
    outputs = []
    for config, params in hf_loaded:
        inputs = prepare_inputs(config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                                hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
        max_length = inputs["input_ids"].shape[1] + steps
        logits, cache, _ = jax.jit(functools.partial(prefill, config=config, max_length=max_length))(
            params, inputs=inputs)
        step = jax.jit(functools.partial(decode_step, config=config, return_attention_mass=(1,)))
        last, step_logits, step_mass = logits[:, -1], [], []
        for _ in range(steps):
            last, cache, aux = step(params, tokens=jnp.argmax(last, axis=-1), cache=cache)
            step_logits.append(np.asarray(last))
            step_mass.append(np.asarray(aux["attention_mass"][1]["visual"]))
        outputs.append((np.stack(step_logits), np.stack(step_mass), cache))
    (ref_logits, ref_mass, ref_cache), (logits, mass, cache) = outputs
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(mass, ref_mass, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(cache.keys), np.asarray(ref_cache.keys), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(cache.valid), np.asarray(ref_cache.valid))


def _loss_and_grad(config, params, inputs, extra):
    weights = jax.random.normal(jax.random.key(7), (*inputs["input_ids"].shape, config.text.vocab_size))

    def loss(p):
        logits, aux = Qwen25VL(config).apply({"params": p}, **inputs, **extra)
        return jnp.mean(logits * weights)

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def reference_grads(tiny_setup):
    config, params, inputs, _, extra = tiny_setup
    return _loss_and_grad(config, params, inputs, extra)


@pytest.mark.parametrize("scan, policy", [(False, "full"), (True, "full"), (True, "dots"), (False, "save_attention")])
def test_remat_gives_the_same_gradients(tiny_setup, reference_grads, scan, policy):
    config, params, inputs, _, extra = tiny_setup
    ref_loss, ref_grads = reference_grads
    remat_config = config.replace(scan_layers=scan, remat_policy=policy)
    loss, grads = _loss_and_grad(remat_config, to_layout(params, remat_config), inputs, extra)
    np.testing.assert_allclose(float(loss), float(ref_loss), atol=1e-6)
    grads = to_layout(grads, config)
    flat_ref = dict(jax.tree_util.tree_flatten_with_path(ref_grads)[0])
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    assert len(flat) == len(flat_ref)
    for path, g in flat:
        np.testing.assert_allclose(np.asarray(g), np.asarray(flat_ref[path]), atol=1e-5, rtol=0, err_msg=str(path))
    assert max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(ref_grads)) > 1e-3


def _primitives(jaxpr, found=None):
    found = set() if found is None else found
    for eqn in jaxpr.eqns:
        found.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            _primitives(sub, found)
    return found


@pytest.mark.parametrize("scan, policy", [(False, "none"), (True, "none"), (True, "dots"), (False, "full")])
def test_jaxpr_holds_scan_and_remat_as_configured(tiny_setup, scan, policy):
    config, params, inputs, _, extra = tiny_setup
    config = config.replace(scan_layers=scan, remat_policy=policy)
    params = to_layout(params, config)

    def loss(p):
        return jnp.sum(Qwen25VL(config).apply({"params": p}, **inputs)[0])

    found = _primitives(jax.make_jaxpr(loss)(params).jaxpr)
    assert ("scan" in found) == scan, found
    assert any(name in found for name in ("checkpoint", "remat", "remat2")) == (policy != "none"), found


@pytest.mark.parametrize("name", ["tiny", "qwen2_5_vl_7b"])
def test_parameter_count_and_logical_axes_under_scan(name):
    config = get_preset(name)
    scan_config = config.replace(scan_layers=True)
    shapes = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
    scan_shapes = jax.eval_shape(functools.partial(init_params, scan_config), jax.random.key(0))
    assert count_params(scan_shapes) == count_params(shapes)
    stacked = jax.eval_shape(functools.partial(stack_layers, config=config), shapes)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), stacked) == jax.tree.map(lambda x: (x.shape, x.dtype),
                                                                               scan_shapes)
    axes = param_logical_axes(scan_config)
    assert tuple(axes["text"]["layers"]["q_proj"]["kernel"]) == ("layers", "embed", "heads", "head_dim")
    assert tuple(axes["visual"]["blocks"]["mlp"]["up_proj"]["kernel"]) == ("layers", "vision_embed", "vision_mlp")
    assert tuple(axes["text"]["embed_tokens"]["embedding"]) == ("vocab", "embed")
    # The layer axis is never sharded; the others keep their mesh axes.
    mesh_axes = nn.logical_to_mesh_axes(("layers", "embed", "heads", "head_dim"), parallel.DEFAULT_RULES)
    assert tuple(mesh_axes) == (None, "fsdp", "tensor", None)


def test_layout_conversion_round_trips_and_names_problems(tiny_setup):
    config, params, *_ = tiny_setup
    stacked = stack_layers(params, config)
    assert not is_stacked(params) and is_stacked(stacked)
    assert "layers_0" not in stacked["text"] and "blocks_0" not in stacked["visual"]
    back = unstack_layers(stacked, config)
    for (path, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                 jax.tree_util.tree_flatten_with_path(back)[0], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    assert to_layout(params, config) is params
    broken = {**params, "text": {k: v for k, v in params["text"].items() if k != "layers_3"}}
    with pytest.raises(ValueError, match="'layers_3'"):
        stack_layers(broken, config)
    deeper = config.replace(text=config.text.__class__(**{**config.text.__dict__, "num_layers": 5}))
    with pytest.raises(ValueError, match="leading layer axis of 5"):
        unstack_layers(stacked, deeper)
    with pytest.raises(ValueError, match="either 'layers'"):
        is_stacked({"text": {"embed_tokens": {}}})


def test_bad_remat_policy_names_the_value():
    with pytest.raises(ValueError, match=r"remat_policy='x': expected one of 'none', 'full', 'dots'"):
        get_preset("tiny").replace(remat_policy="x")
    with pytest.raises(ValueError, match=r"scan_layers=1"):
        get_preset("tiny").replace(scan_layers=1)
