"""SFT region-attention supervision (sif_jax/region_supervision.py): the recomputed region mass against
the attention kernel's own masses, its gradient, the loss wiring in `sft_grads`, the config checks and
the vision tower warm start (`checkpoint_loading.load_vision_tower`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax import region_supervision as rs
from sif_jax.data import pipeline as pl
from sif_jax.data.batching import collate_sft
from sif_jax.data.scenes import SceneConfig
from sif_jax.data.tokenizer import BuiltinTokenizer
from sif_jax.model.config import tiny
from sif_jax.model.family import family_of
from sif_jax.sft import sft_grads, sft_loss_and_region_terms, sft_loss_terms


@pytest.fixture(scope="module")
def setup():
    config = tiny()
    pre = pl.Preprocessor(BuiltinTokenizer(), config)
    source = pl.BuiltinSource(seed=5, size=3, scene_config=SceneConfig(height=112, width=112))
    batch = collate_sft([pre(source[i]) for i in range(3)], config, length_buckets=(512,))  # left padding
    params = family_of(config).init_params(config, jax.random.key(0))
    return config, batch, params


def test_region_mass_equals_the_kernels_masses(setup):
    config, batch, params = setup
    family = family_of(config)
    inputs = family.model_inputs(batch.inputs.arrays())
    region = jnp.asarray(batch.region_mask)
    assert bool(region.any(axis=1).all())
    layers = (1, 3)
    (_, aux), state = family.module(config).apply(
        {"params": params}, **inputs, region_mask=region, return_attention_mass=layers, return_hidden=True,
        mutable=["intermediates"], capture_intermediates=rs.capture_filter(layers))
    cos, sin = family.text_rope(config, inputs["positions"])
    mass = rs.region_mass(state["intermediates"], layers, cos, sin, inputs["attention_mask"], region)
    kernel = jnp.mean(jnp.stack([aux["attention_mass"][i]["region"] for i in layers]), axis=(0, 2))
    valid = np.asarray(inputs["attention_mask"]).astype(bool)
    np.testing.assert_allclose(np.asarray(mass)[valid], np.asarray(kernel)[valid], atol=2e-5)
    assert np.all(np.asarray(mass)[~valid] == 0)  # padding rows: 0, not NaN


def test_the_region_term_has_a_finite_gradient_that_raises_the_mass(setup):
    config, batch, params = setup
    inputs, mask, region = batch.inputs.arrays(), batch.loss_mask, jnp.asarray(batch.region_mask)

    def term(p):
        _, _, total, rows = sft_loss_and_region_terms(p, inputs, mask, region, config=config, region_layers=(3,))
        return total / rows

    before, grads = jax.value_and_grad(term)(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads["text"]["layers_3"]))
    stepped = jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, params, grads)
    assert float(term(stepped)) < float(before)  # -log mass falls: more attention on the region


def test_sft_grads_adds_the_weighted_term(setup):
    config, batch, params = setup
    inputs, mask, region = batch.inputs.arrays(), batch.loss_mask, jnp.asarray(batch.region_mask)
    den = jnp.maximum(jnp.sum(mask[:, 1:]), 1.0)
    _, (num0, tok0, r0, rows0) = sft_grads(params, inputs, mask, den, config=config)
    assert float(r0) == 0 and float(rows0) == 0
    num_plain, tok_plain = sft_loss_terms(params, inputs, mask, config=config)
    np.testing.assert_allclose(float(num0), float(num_plain), rtol=1e-6)
    _, (num1, tok1, r1, rows1) = sft_grads(params, inputs, mask, den, None, None, region, config=config,
                                           region_weight=0.5, region_layers=(3,))
    np.testing.assert_allclose(float(num1), float(num0), rtol=1e-6)  # same NLL
    assert float(rows1) == float(np.sum(np.asarray(mask)[:, 1:]))  # every label row of these examples
    assert float(r1) > 0
    # the gradient is that of NLL / den + weight * term: linear in the weight
    g0 = sft_grads(params, inputs, mask, den, config=config)[0]
    g_half, g_one = (sft_grads(params, inputs, mask, den, None, None, region, config=config, region_weight=w,
                               region_layers=(3,))[0] for w in (0.5, 1.0))
    for a, b, c in zip(*(jax.tree_util.tree_leaves(g) for g in (g0, g_half, g_one)), strict=True):
        np.testing.assert_allclose(np.asarray(b - a), 0.5 * np.asarray(c - a), rtol=1e-3, atol=1e-6)
    assert any(float(jnp.abs(c - a).max()) > 1e-4 for a, c in zip(jax.tree_util.tree_leaves(g0),
                                                                  jax.tree_util.tree_leaves(g_one), strict=True))


def test_layer_indices_and_config_checks():
    assert rs.layer_indices((-1, 0, 3), 4) == (0, 3)
    with pytest.raises(ValueError, match=r"config\.sft\.region_attention_layers=\(4,\): layer 4 is outside the "
                                         r"model's 4 decoder layers"):
        rs.layer_indices((4,), 4)
    from configs import grpo
    from sif_jax import run_config

    c = grpo.get_config()
    c.sft.region_attention_weight = -1.0
    with pytest.raises(ValueError, match=r"config\.sft\.region_attention_weight=-1\.0: must be >= 0"):
        run_config.from_config_dict(c)
    c = grpo.get_config()
    c.sft.region_attention_weight, c.sft.region_attention_layers = 1.0, (7,)
    with pytest.raises(ValueError, match=r"region_attention_layers=\(7,\): layer 7 is outside the model's 4"):
        run_config.build(c)  # before anything loads: tiny has 4 decoder layers
    c = grpo.get_config()
    c.vision_init, c.init_checkpoint = "tower.npz", "/some/run"
    with pytest.raises(ValueError, match=r"config\.vision_init='tower\.npz': would replace the vision tower of "
                                         r"config\.init_checkpoint"):
        run_config.build(c, check_paths=False)
    c = grpo.get_config()
    c.sft.region_attention_weight, c.scan_layers = 1.0, True
    with pytest.raises(ValueError, match=r"config\.sft\.region_attention_weight=1\.0: .*needs scan_layers=False"):
        run_config.from_config_dict(c)


def test_load_vision_tower(tmp_path, setup):
    from sif_jax.checkpoint_loading import load_vision_tower

    _, _, params = setup
    leaves = jax.tree_util.tree_leaves_with_path(params["visual"])
    arrays = {jax.tree_util.keystr(k): np.full(x.shape, 0.5, np.float32) for k, x in leaves}
    np.savez(tmp_path / "v.npz", **arrays)
    loaded = load_vision_tower(str(tmp_path / "v.npz"), params["visual"])
    for (_, x), y in zip(leaves, jax.tree_util.tree_leaves(loaded), strict=True):
        assert y.shape == x.shape and y.dtype == x.dtype and bool(jnp.all(y == 0.5))
    first = next(iter(arrays))
    np.savez(tmp_path / "short.npz", **{k: v for k, v in arrays.items() if k != first})
    with pytest.raises(ValueError, match=r"config\.vision_init=.*short\.npz.*no array for the vision tower's"):
        load_vision_tower(str(tmp_path / "short.npz"), params["visual"])
    np.savez(tmp_path / "shape.npz", **{**arrays, first: np.zeros((1, 2), np.float32)})
    with pytest.raises(ValueError, match=r"has shape \(1, 2\)"):
        load_vision_tower(str(tmp_path / "shape.npz"), params["visual"])
    np.savez(tmp_path / "extra.npz", **arrays, other=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"1 arrays the model's vision tower does not have, e\.g\. other"):
        load_vision_tower(str(tmp_path / "extra.npz"), params["visual"])
    with pytest.raises(ValueError, match="no such file"):
        load_vision_tower(str(tmp_path / "none.npz"), params["visual"])


def test_sft_run_with_the_grounding_aids(tmp_path):
    """`python -m sif_jax.train` SFT with captions, region-attention supervision and a frozen, warm-started
    vision tower: the tower stays the loaded one and the metric rows carry the attention term."""
    import json

    from sif_jax import train
    from tests.train.conftest import tiny_run_config

    c = tiny_run_config(str(tmp_path / "run"))
    c.sft.steps, c.grpo.steps, c.sft.batch_size = 2, 0, 2
    c.sft.caption_fraction, c.sft.region_attention_weight = 0.5, 1.0
    c.sft.region_attention_layers = (-1,)
    c.sft.freeze_vision = True
    run, params = train._setup(c)
    leaves = jax.tree_util.tree_leaves_with_path(params["visual"])
    np.savez(tmp_path / "tower.npz", **{jax.tree_util.keystr(k): np.asarray(x) + 0.01 for k, x in leaves})
    c.vision_init = str(tmp_path / "tower.npz")
    from sif_jax.data.captions import CaptionMix

    run, params = train._setup(c)
    mix = run.data.sft_source()
    assert isinstance(mix, CaptionMix) and any(mix.is_caption(i) for i in range(8))
    trained = train.run_sft(run, params)
    with open(tmp_path / "run" / "sft_metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2] and all(r["sft_region_nll"] > 0 for r in rows)
    for (_, x), y in zip(leaves, jax.tree_util.tree_leaves(trained["visual"]), strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x) + 0.01, rtol=1e-6)  # loaded, then frozen


def test_a_frozen_tower_neither_moves_nor_shrinks_the_step():
    from sif_jax.optim import make_optimizer

    params = {"visual": {"w": jnp.ones(3)}, "text": {"w": jnp.ones(3)}}
    small = {"visual": {"w": jnp.zeros(3)}, "text": {"w": jnp.full(3, 0.1)}}
    large = {"visual": {"w": jnp.full(3, 100.0)}, "text": {"w": jnp.full(3, 0.1)}}
    tx = make_optimizer(0.1, freeze_vision=True, grad_clip=1.0)
    updates = [tx.update(g, tx.init(params), params)[0] for g in (small, large)]
    assert bool(jnp.all(updates[1]["visual"]["w"] == 0))
    np.testing.assert_allclose(np.asarray(updates[1]["text"]["w"]), np.asarray(updates[0]["text"]["w"]), rtol=1e-6)
