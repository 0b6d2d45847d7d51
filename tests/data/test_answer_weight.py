"""SFT answer weighting: where the answer starts in a trace's tokens (built-in and Qwen BPE), its
column after `collate_sft`, the label weights, and the weighted loss against a NumPy NLL."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from sif_jax.data import pipeline as pl
from sif_jax.data import tokenizer as tk
from sif_jax.data.batching import collate_sft
from sif_jax.data.scenes import SceneConfig
from sif_jax.data.tokenizer import BuiltinTokenizer
from sif_jax.model.config import tiny
from sif_jax.model.vlm import forward, init_params
from sif_jax.sft import loss_weights, sft_loss_terms


@pytest.fixture(scope="module")
def built_in():
    config, tok = tiny(), BuiltinTokenizer()
    pre = pl.Preprocessor(tok, config)
    source = pl.BuiltinSource(seed=3, size=6, scene_config=SceneConfig(height=112, width=112))
    return config, tok, [pre(source[i]) for i in range(6)]


def _decoded_from(tok, tokens, start):
    return tok.decode([int(t) for t in tokens[start:]])


def test_answer_start_is_the_answer_tag_in_built_in_traces(built_in):
    _, tok, examples = built_in
    for ex in examples:
        start = ex["answer_start"]
        assert 0 < start < len(ex["target_tokens"])
        assert _decoded_from(tok, ex["target_tokens"], start).lstrip().startswith("<answer>")
        assert "<answer>" not in tok.decode([int(t) for t in ex["target_tokens"][:start]])


def test_answer_start_with_the_qwen_bpe(tokenizers_dir):
    qwen = tk.HFTokenizer(os.path.join(tokenizers_dir, "qwen3"))
    trace = ("<think><area>[{\"bbox_2d\": [10, 20, 30, 40]}]</area><text>the cup is left of the box</text></think>"
             "<answer>left</answer>")
    target = qwen.encode(trace)
    start = pl.answer_start(qwen, trace, target)
    assert qwen.decode(target[start:]) == "<answer>left</answer>"
    assert pl.answer_start(qwen, "no tags here", qwen.encode("no tags here")) == len(qwen.encode("no tags here"))


def test_collate_sft_puts_answer_start_on_the_tag_column(built_in):
    config, tok, examples = built_in
    batch = collate_sft(examples[:3] + [examples[3] | {"answer_start": len(examples[3]["target_tokens"])}], config,
                        length_buckets=(512,))
    ids = np.asarray(batch.inputs.input_ids)
    for r in range(3):
        col = int(batch.answer_start[r])
        first_label = ids.shape[1] - len(examples[r]["target_tokens"]) - 1
        assert batch.loss_mask[r, first_label] and not batch.loss_mask[r, first_label - 1]
        assert col == first_label + examples[r]["answer_start"]
        assert tok.decode([int(t) for t in ids[r, col:]]).lstrip().startswith("<answer>")
    assert int(batch.answer_start[3]) == ids.shape[1] - 1  # no answer: the eos column


def test_loss_weights_values():
    mask = np.zeros((2, 8), bool)
    mask[0, 3:] = True
    mask[1, 5:] = True
    start = np.array([6, 7], np.int32)
    w = np.asarray(loss_weights(mask, start, 4.0))
    np.testing.assert_array_equal(w[0], [0, 0, 0, 1, 1, 1, 4, 4])
    np.testing.assert_array_equal(w[1], [0, 0, 0, 0, 0, 1, 1, 4])
    np.testing.assert_array_equal(np.asarray(loss_weights(mask, start, 1.0)), mask.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(loss_weights(mask, None, 4.0)), mask.astype(np.float32))


def test_weighted_sft_loss_equals_the_numpy_weighted_nll(built_in):
    config, _, examples = built_in
    batch = collate_sft(examples[:2], config, length_buckets=(512,))
    params = init_params(config, jax.random.key(0))
    weights = loss_weights(batch.loss_mask, batch.answer_start, 5.0)
    num, den = sft_loss_terms(params, batch.inputs, weights, config=config, vocab_chunk=256)
    ins = batch.inputs
    logits, _ = forward(params, config, ins.input_ids, ins.attention_mask,
                        np.concatenate([ins.pixel_values[r, : int(np.prod(ins.image_grid_thw[r]))] for r in range(2)]),
                        ins.image_grid_thw)
    logits = np.asarray(logits, np.float64)[:, :-1]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True)
    target_logp = np.take_along_axis(logp, np.asarray(ins.input_ids)[:, 1:, None], axis=-1)[..., 0]
    w = np.asarray(weights)[:, 1:]
    np.testing.assert_allclose(float(den), w.sum(), rtol=1e-6)
    np.testing.assert_allclose(float(num), -(target_logp * w).sum(), rtol=1e-4)
    assert (w == 5.0).sum() > 0 and (w == 1.0).sum() > (w == 5.0).sum()
