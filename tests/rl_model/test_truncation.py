"""Truncated rollouts: flagged by the sampler, counted in the step metrics, and (with
`mask_truncated_completions`) left out of the GRPO loss and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.batch import Batch, ModelInputs, RewardTargets
from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.infer.sampler import SamplingConfig, generate
from sif_jax.model.vlm import prepare_inputs
from sif_jax.rl.grpo import GRPOConfig, TrainState, loss_grads, reward_and_advantage, sample_and_score
from sif_jax.rl.rewards import RewardConfig, RewardResult, RewardState
from sif_jax.rl.types import Rollout

STEPS = 6


@pytest.fixture(scope="module")
def setup(hf_tiny_dir, hf_tiny_io):
    config, params = load_hf_checkpoint(hf_tiny_dir)
    prompt = prepare_inputs(config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                            hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
    prompt = {k: jnp.asarray(v) for k, v in prompt.items()}
    greedy = np.asarray(generate(params, prompt, jax.random.key(0), config=config,
                                 sampling=SamplingConfig(max_new_tokens=STEPS, temperature=0.0), eos_token_id=-1,
                                 pad_token_id=0).tokens)
    # an "EOS" that row 0 emits and row 1 never does: row 0 finishes, row 1 is cut off
    eos = next(int(t) for t in greedy[0] if t not in greedy[1])
    return config, params, prompt, greedy, eos


def expected_truncated(tokens, mask, eos):
    return np.array([not (tokens[r][mask[r]] == eos).any() for r in range(len(tokens))])


def test_sampler_flags_rows_that_hit_max_new_tokens(setup):
    config, params, prompt, greedy, eos = setup
    samples = generate(params, prompt, jax.random.key(0), config=config,
                       sampling=SamplingConfig(max_new_tokens=STEPS, temperature=0.0), eos_token_id=eos,
                       pad_token_id=0)
    tokens, mask = np.asarray(samples.tokens), np.asarray(samples.completion_mask)
    assert np.asarray(samples.truncated).tolist() == [False, True]
    np.testing.assert_array_equal(np.asarray(samples.truncated), expected_truncated(tokens, mask, eos))
    assert mask[1].all() and mask[0].sum() == 1 + int(np.flatnonzero(greedy[0] == eos)[0])
    # EOS as the very last allowed token: finished, not truncated
    last = int(greedy[0, STEPS - 1])
    if last not in greedy[0, : STEPS - 1]:
        at_end = generate(params, prompt, jax.random.key(0), config=config,
                          sampling=SamplingConfig(max_new_tokens=STEPS, temperature=0.0), eos_token_id=last,
                          pad_token_id=0)
        assert not bool(np.asarray(at_end.truncated)[0]) and np.asarray(at_end.completion_mask)[0].all()
    # no EOS anywhere: every row truncated
    none = generate(params, prompt, jax.random.key(0), config=config,
                    sampling=SamplingConfig(max_new_tokens=3, temperature=0.0), eos_token_id=-1, pad_token_id=0)
    assert np.asarray(none.truncated).all()


def _micro_batch(config, prompt):
    n = prompt["input_ids"].shape[0]
    visual = np.asarray(prompt["input_ids"]) == config.image_token_id
    targets = RewardTargets(answers=["yes"] * n, choices=[None] * n, target_boxes=[np.zeros((0, 4), np.float32)] * n,
                            depth_maps=[None] * n, prompt_ids=["p"] * n, metadata=[{}] * n)
    return Batch(ModelInputs.from_arrays(prompt), region_mask=jnp.asarray(visual),
                 region_tokens=jnp.asarray(visual.sum(1), jnp.int32),
                 visual_tokens=jnp.asarray(visual.sum(1), jnp.int32), targets=targets)


@pytest.mark.parametrize("mask_truncated", [False, True])
def test_rollouts_carry_the_flag_the_metric_and_the_loss_mask(setup, mask_truncated):
    config, params, prompt, _, eos = setup
    grpo = GRPOConfig(group_size=2, beta=0.0, sampling=SamplingConfig(max_new_tokens=STEPS, temperature=0.0),
                      share_prompts=False,  # two different prompts, flat image layout
                      mass_layers=(-1,), vocab_chunk=64, mask_truncated_completions=mask_truncated)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, ref_params=None, opt_state=None,
                       rng=jax.random.key_data(jax.random.key(0)))

    def reward_fn(batch, reward_state, _):
        return RewardResult(np.array([1.0, 0.0], np.float32), {}, reward_state)

    batch = _micro_batch(config, prompt)
    scored = sample_and_score(state.params, state.ref_params, batch, jax.random.fold_in(jax.random.key(0), 0),
                              config=config, grpo=grpo, eos_token_id=eos, pad_token_id=0)
    rollouts, _, metrics, _ = reward_and_advantage(
        [scored], [batch], grpo=grpo, decode=lambda ids: str(list(ids)), reward_config=RewardConfig(),
        reward_state=RewardState(), reward_fn=reward_fn)
    (r,) = rollouts
    truncated = expected_truncated(np.asarray(r.completion), np.asarray(r.completion_mask), eos)
    np.testing.assert_array_equal(np.asarray(r.truncated), truncated)
    assert metrics["truncated_fraction"] == pytest.approx(truncated.mean()) == 0.5
    want = np.asarray(r.completion_mask) & ~(truncated[:, None] if mask_truncated else False)
    np.testing.assert_array_equal(np.asarray(r.loss_mask), want)

    # The gradient of the masked batch equals that of the finished rows alone (same denominator).
    grads, (num, den, _) = loss_grads(params, r, jnp.float32(1.0), config=config, grpo=grpo)
    if not mask_truncated:
        assert float(den) == 2.0
        return
    assert float(den) == 1.0
    keep = np.flatnonzero(~truncated)
    sub = lambda x: x[keep]  # noqa: E731
    sub_prompt = _one_row_prompt(config, keep[0])  # the finished row with its own image only
    sub_rollout = Rollout.create(sub_prompt, sub(r.completion), sub(r.completion_mask), sub(r.old_logp), None,
                                 sub(r.advantages), loss_mask=sub(r.loss_mask))
    sub_grads, (sub_num, _, _) = loss_grads(params, sub_rollout, jnp.float32(1.0), config=config, grpo=grpo)
    np.testing.assert_allclose(float(num), float(sub_num), rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(sub_grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


_IO = {}


@pytest.fixture(autouse=True)
def _keep_io(hf_tiny_io):
    _IO.update(hf_tiny_io)


def _one_row_prompt(config, row):
    """Row `row` of the fixture batch as a one-row prompt (its own image only)."""
    ids, mask = _IO["input_ids"][row : row + 1], _IO["attention_mask"][row : row + 1]
    grids = np.asarray(_IO["image_grid_thw"]).reshape(-1, 3)
    counts = np.prod(grids, axis=-1)
    start = int(counts[:row].sum())
    pixels = _IO["pixel_values"][start : start + int(counts[row])]
    prompt = prepare_inputs(config, ids, mask, pixels, grids[row : row + 1])
    return {k: jnp.asarray(v) for k, v in prompt.items()}
