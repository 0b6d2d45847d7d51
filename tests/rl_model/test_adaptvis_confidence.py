"""Where AdaptVis reads its confidence and which row it scales, per output format.

Oracle: full (cache-free) forwards over prompt + completion prefix with `vlm.forward`, with the
AdaptVis alpha placed on exactly one query row.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sif_jax.batch import Batch, ModelInputs, RewardTargets
from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.evaluation import evaluate_batches
from sif_jax.infer.adaptvis import (
    AdaptVisConfig,
    answer_step,
    answer_tag_ids,
    choose_alpha,
    generate_adaptvis,
    read_confidence,
)
from sif_jax.infer.sampler import SamplingConfig, generate, vision_control_ids
from sif_jax.model.vlm import forward, prepare_inputs

STEPS = 8
GREEDY = SamplingConfig(max_new_tokens=STEPS, temperature=0.0)


@pytest.fixture(scope="module")
def setup(hf_tiny_dir, hf_tiny_io):
    config, params = load_hf_checkpoint(hf_tiny_dir)
    prompt = prepare_inputs(config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                            hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"])
    prompt = {k: jnp.asarray(v) for k, v in prompt.items()}
    greedy = generate(params, prompt, jax.random.key(0), config=config, sampling=GREEDY, eos_token_id=-1,
                      pad_token_id=0)
    return config, params, prompt, np.asarray(greedy.tokens)


def full_logits(params, config, io, prefix, scale_at=None, alpha=None):
    """Logits [N, L + k, V] of a cache-free forward over prompt + prefix [N, k]; with `scale_at`
    (int [N], absolute positions) the visual keys of that one query row are scaled by alpha [N].
    The vision control ids' logits are -inf, as in the sampler."""
    ids = np.concatenate([io["input_ids"], prefix], axis=1)
    mask = np.concatenate([io["attention_mask"], np.ones_like(prefix)], axis=1)
    kwargs = {}
    if scale_at is not None:
        scale = np.ones(ids.shape, np.float32)
        scale[np.arange(ids.shape[0]), scale_at] = alpha
        kwargs["visual_scale"] = jnp.asarray(scale)
    logits, _ = forward(params, config, ids, mask, io["pixel_values"], io["image_grid_thw"], **kwargs)
    logits = np.asarray(logits).copy()
    logits[..., list(vision_control_ids(config))] = -np.inf  # the sampler never draws these
    return logits


def max_softmax(logits):
    return np.asarray(jax.nn.softmax(jnp.asarray(logits), -1).max(-1))


def test_answer_step_finds_the_token_after_the_first_complete_tag():
    tokens = jnp.array([[5, 1, 2, 9, 1, 2, 7], [1, 2, 0, 0, 0, 0, 0], [3, 3, 3, 3, 3, 1, 2], [1, 3, 2, 1, 2, 4, 0]])
    mask = jnp.array([[1] * 7, [1, 1, 0, 0, 0, 0, 0], [1] * 7, [1] * 6 + [0]], bool)
    step, found = answer_step(tokens, mask, (1, 2))
    # row 1: the tag ends the completion (no answer token); row 2: the tag is the last token
    assert np.asarray(step).tolist() == [3, 0, 0, 5] and np.asarray(found).tolist() == [True, False, False, True]
    step, found = answer_step(tokens, mask, ())
    assert np.asarray(step).tolist() == [0, 0, 0, 0] and np.asarray(found).all()


def test_answer_tag_ids_per_format():
    class Tok:
        def encode(self, text):
            return {"<answer>": [17]}[text]

    assert answer_tag_ids(Tok(), "plain") == () and answer_tag_ids(Tok(), "trace") == (17,)
    with pytest.raises(ValueError, match="output_format='json'"):
        answer_tag_ids(Tok(), "json")


def test_plain_format_reads_the_first_token_and_scales_the_last_prompt_row(setup, hf_tiny_io):
    config, params, prompt, _ = setup
    adaptvis = AdaptVisConfig(alpha_low=0.25, alpha_high=8.0, threshold=0.5)
    result = generate_adaptvis(params, prompt, jax.random.key(0), config=config, sampling=GREEDY, adaptvis=adaptvis,
                               eos_token_id=-1, pad_token_id=0)
    length = hf_tiny_io["input_ids"].shape[1]
    plain = full_logits(params, config, hf_tiny_io, np.zeros((2, 0), np.int32))[:, -1]
    np.testing.assert_allclose(np.asarray(result.confidence), max_softmax(plain), atol=1e-5)
    assert np.asarray(result.confidence_step).tolist() == [0, 0] and np.asarray(result.answer_found).all()
    alpha = np.asarray(result.alpha)
    np.testing.assert_array_equal(alpha, np.where(max_softmax(plain) < 0.5, 0.25, 8.0))
    scaled = full_logits(params, config, hf_tiny_io, np.zeros((2, 0), np.int32), np.full(2, length - 1), alpha)
    np.testing.assert_array_equal(np.asarray(result.samples.tokens)[:, 0], scaled[:, -1].argmax(-1))


@pytest.mark.parametrize("tag_len", [1, 2])
def test_trace_format_reads_the_token_after_the_tag_and_scales_the_row_that_produces_it(setup, hf_tiny_io,
                                                                                         tag_len):
    config, params, prompt, greedy = setup
    # A stand-in for `<answer>`: greedy row 0's tokens 2.. (row 0 finds it; row 1 may not)
    tag = tuple(int(t) for t in greedy[0, 2 : 2 + tag_len])
    step_np = np.zeros(2, int)
    found_np = np.zeros(2, bool)
    for r in range(2):
        for e in range(STEPS - tag_len):
            if tuple(greedy[r, e : e + tag_len]) == tag:
                step_np[r], found_np[r] = e + tag_len, True
                break
    assert found_np[0] and step_np[0] <= 2 + tag_len
    adaptvis = AdaptVisConfig(alpha_low=0.25, alpha_high=8.0, threshold=0.5)
    result = generate_adaptvis(params, prompt, jax.random.key(0), config=config, sampling=GREEDY, adaptvis=adaptvis,
                               eos_token_id=-1, pad_token_id=0, answer_tag=tag)
    assert np.asarray(result.confidence_step).tolist() == step_np.tolist()
    assert np.asarray(result.answer_found).tolist() == found_np.tolist()
    length = hf_tiny_io["input_ids"].shape[1]
    k = int(step_np.max())
    unscaled = full_logits(params, config, hf_tiny_io, greedy[:, :k])
    expected_conf = max_softmax(unscaled[np.arange(2), length - 1 + step_np])
    np.testing.assert_allclose(np.asarray(result.confidence), expected_conf, atol=1e-5)
    alpha = np.asarray(result.alpha)
    np.testing.assert_array_equal(alpha, np.asarray(choose_alpha(jnp.asarray(expected_conf), adaptvis)))
    tokens = np.asarray(result.samples.tokens)
    for r in range(2):  # pass 2 repeats pass 1 up to the scaled row ...
        np.testing.assert_array_equal(tokens[r, : step_np[r]], greedy[r, : step_np[r]])
    # ... and its next token is the argmax of a forward whose one scaled row produces it
    both = full_logits(params, config, hf_tiny_io, greedy[:, :k], length - 1 + step_np, alpha)
    np.testing.assert_array_equal(tokens[np.arange(2), step_np], both[np.arange(2), length - 1 + step_np].argmax(-1))


def _eval_batch(config, prompt, hf_tiny_io):
    n = prompt["input_ids"].shape[0]
    visual = np.asarray(prompt["input_ids"]) == config.image_token_id
    targets = RewardTargets(answers=["yes"] * n, choices=[None] * n, target_boxes=[np.zeros((0, 4), np.float32)] * n,
                            depth_maps=[None] * n, prompt_ids=[f"p{i}" for i in range(n)], metadata=[{}] * n)
    return Batch(ModelInputs.from_arrays(prompt), region_mask=jnp.asarray(visual),
                 region_tokens=jnp.asarray(visual.sum(1), jnp.int32),
                 visual_tokens=jnp.asarray(visual.sum(1), jnp.int32), targets=targets)


@pytest.mark.parametrize("trace", [False, True])
def test_evaluate_reports_the_probe_confidence_for_greedy_and_adaptvis_alike(setup, hf_tiny_io, trace):
    config, params, prompt, greedy = setup
    tag = (int(greedy[0, 2]),) if trace else ()
    batch = _eval_batch(config, prompt, hf_tiny_io)
    common = dict(config=config, decode=lambda ids: " ".join(map(str, ids)), max_new_tokens=STEPS,
                  mass_layers=(-1,), eos_token_id=-1, pad_token_id=0, answer_tag=tag)
    adaptvis = AdaptVisConfig(alpha_low=0.25, alpha_high=8.0, threshold=0.5)
    plain_rows = evaluate_batches(params, [batch], **common).rows
    av_rows = evaluate_batches(params, [batch], adaptvis=adaptvis, **common).rows
    probe = generate(params, prompt, jax.random.key(0), config=config, sampling=GREEDY, eos_token_id=-1,
                     pad_token_id=0)
    confidence, step, _ = read_confidence(probe, tag)
    for rows in (plain_rows, av_rows):
        np.testing.assert_allclose([r["confidence"] for r in rows], np.asarray(confidence), atol=1e-6)
        assert [r["confidence_step"] for r in rows] == np.asarray(step).tolist()
    assert [r["alpha"] for r in av_rows] == [0.25 if r["confidence"] < 0.5 else 8.0 for r in av_rows]
