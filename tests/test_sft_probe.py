"""benchmarks/sft_probe.py: the trace segments its teacher-forced accuracies are grouped by."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from sif_jax.data.pipeline import BuiltinSource
from sif_jax.data.tokenizer import BuiltinTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _probe():
    spec = importlib.util.spec_from_file_location("sft_probe", os.path.join(ROOT, "benchmarks", "sft_probe.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["sft_probe"] = module
    spec.loader.exec_module(module)
    return module


def _segments(probe, tok, trace):
    pieces = [tok.decode([i], skip_special_tokens=False) for i in tok.encode(trace)]
    labels = probe.segment_labels(trace, pieces)
    out: dict[str, str] = {}
    for piece, label in zip(pieces, labels, strict=True):
        out[label] = out.get(label, "") + piece
    return out


def test_segments_of_a_hand_written_trace():
    probe, tok = _probe(), BuiltinTokenizer()
    trace = ('<think><area>[{"bbox_2d":[0,0,1,1],"depth":0.5}]</area><text>I look first. I need to compare '
             'the red cube and the blue cone.</text><area>[{"bbox_2d":[0.118,0.2,0.5,0.647],"depth":0.31}]</area>'
             '<text>The red cube (depth 0.2) is to the left of the blue cone (depth 0.4).</text></think>'
             '<answer>yes</answer>')
    seg = _segments(probe, tok, trace)
    assert seg["goal"] == " I need to compare the red cube and the blue cone."
    assert seg["box"] == "00110.1180.20.50.647"
    assert seg["depth"] == "0.50.31"
    assert seg["text"] == "I look first."
    assert seg["conclusion"] == "The red cube (depth 0.2) is to the left of the blue cone (depth 0.4)."
    assert seg["answer"] == "yes"
    assert seg["syntax"] == ('<think><area>[{"bbox_2d":[,,,],"depth":}]</area><text></text><area>[{"bbox_2d":[,,,],'
                             '"depth":}]</area><text></text></think><answer></answer>')


def test_every_builtin_trace_has_each_segment():
    probe, tok = _probe(), BuiltinTokenizer()
    source = BuiltinSource(seed=3, size=40, split="test")
    for i in range(len(source)):
        ex = source[i]
        seg = _segments(probe, tok, ex["trace"])
        assert seg["answer"] == ex["answer"], ex["id"]
        assert seg["goal"].lstrip().startswith("I need"), (ex["id"], seg)
        assert {"box", "depth", "conclusion", "syntax"} <= set(seg), ex["id"]


def test_pieces_must_spell_the_trace():
    with pytest.raises(ValueError, match="do not spell"):
        _probe().segment_labels("<answer>yes</answer>", ["<answer>", "no", "</answer>"])



def test_caption_probe_labels_names_as_text():
    from sif_jax.data.pipeline import Preprocessor
    from sif_jax.model.config import tiny

    probe, tok = _probe(), BuiltinTokenizer()
    source = BuiltinSource(seed=3, size=4, split="test")
    examples = probe.probe_examples(source, 4, captions=True)
    assert [ex["family"] for ex in examples] == ["caption"] * 4
    assert [ex["image"].tobytes() for ex in examples] == [source[i]["image"].tobytes() for i in range(4)]
    pre = Preprocessor(tok, tiny())
    processed = [pre(ex) for ex in examples]
    for ex, pex, labels in zip(examples, processed, probe.trace_labels(examples, processed, tok, captions=True),
                               strict=True):
        assert len(labels) == len(pex["target_tokens"]) + 1
        assert {"box", "depth", "text", "answer", "syntax"} == set(labels), ex["id"]
        names = "".join(tok.decode([int(t)]) for t, s in zip(pex["target_tokens"], labels, strict=False)
                        if s == "text")
        assert names.count("The ") == int(ex["answer"])
