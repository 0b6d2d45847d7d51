"""`python -m sif_jax.generate`: the trace, the heat-map PNG, and the heat-map-sum property."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from sif_jax.cli import load_model, read_image
from sif_jax.data.batching import collate
from sif_jax.data.pipeline import Preprocessor
from sif_jax.generate import all_areas, pretty_trace, visual_attention_map
from sif_jax.infer.sampler import SamplingConfig, generate
from sif_jax.infer.scoring import score
from sif_jax.model.vlm import model_inputs
from tests.cli.conftest import run_cli


def test_generate_prints_trace_and_writes_heatmap(cli_files, tmp_path):
    png = tmp_path / "heat.png"
    proc = run_cli("generate", f"--checkpoint={cli_files['run']}", f"--image={cli_files['images'][0]}",
                   "--question=Is the red cube to the left of the blue sphere?", "--max_new_tokens=6",
                   "--adaptvis", f"--heatmap={png}", "--layers=-1")
    assert proc.returncode == 0, proc.stderr
    for part in ("question:", "trace:", "answer:", "format:", "AdaptVis:", "heat-map:"):
        assert part in proc.stdout, part
    assert png.exists() and png.stat().st_size > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("layers", [(-1,), (0, 2)])
def test_heatmap_sums_to_the_scoring_pass_visual_mass(cli_files, layers):
    loaded = load_model(cli_files["run"])
    config, tok = loaded.config, loaded.tokenizer
    example = Preprocessor(tok, config)({"id": "q", "image": read_image(cli_files["images"][1]), "depth": None,
                                         "problem": "How many red objects are there?", "answer": "1", "choices": [],
                                         "boxes": np.array([[0.5, 0.0, 1.0, 0.5]], np.float32), "trace": ""})
    batch = collate([example], config, length_buckets=(len(example["prompt_tokens"]),))
    prompt = model_inputs(batch.inputs)
    samples = generate(loaded.params, prompt, jax.random.key(0), config=config,
                       sampling=SamplingConfig(max_new_tokens=5, temperature=0.0), eos_token_id=tok.eos_id,
                       pad_token_id=tok.pad_id)
    # 16 tokens: chunks of 6, 6, 4 (+2 padding copies)
    heat, visual = visual_attention_map(loaded.params, batch.inputs, samples.tokens, samples.completion_mask,
                                        config=config, layers=layers, chunk=6)
    assert heat.shape == (int(batch.visual_tokens[0]),) and (heat >= 0).all()
    norm = tuple(sorted(i % config.text.num_layers for i in layers))
    scores = score(loaded.params, prompt, samples.tokens, samples.completion_mask, batch.region_mask,
                   config=config, mass_layers=norm)
    mask = np.asarray(samples.completion_mask)[0]
    expected = float(np.asarray(scores.visual_mass)[0][mask].mean())
    np.testing.assert_allclose(heat.sum(), expected, rtol=1e-4)
    np.testing.assert_allclose(visual, expected, rtol=1e-4)
    # Cells are in the raster order of the training region masks: the cells of a box (top-right
    # quadrant, not symmetric) sum to the region mass the scoring pass gives that box.
    cells = example["region_cells"]
    assert 0 < cells.sum() < len(cells)
    region = float(np.asarray(scores.region_mass)[0][mask].mean())
    np.testing.assert_allclose(heat[cells].sum(), region, rtol=1e-4)
    assert not np.isclose(heat[np.flip(cells.reshape(4, 4), axis=1).reshape(-1)].sum(), region, rtol=1e-4)


def test_area_parsing_and_trace_layout():
    text = ('<think><area>[{"bbox_2d":[0,0,1,1],"depth":0.5}]</area><text>whole</text>'
            '<area>[{"bbox_2d":[0.1,0.2,0.3,0.4],"depth":0.2}]</area><text>zoom</text></think><answer>yes</answer>')
    assert all_areas(text) == [[(0.0, 0.0, 1.0, 1.0)], [(0.1, 0.2, 0.3, 0.4)]]
    broken = text.replace("<answer>yes</answer>", "") + '<area>[{"bbox_2d":[0.5,0.5,1.4,0.9]}]</area><area>x</area>'
    assert all_areas(broken)[-1] == [(0.5, 0.5, 1.0, 0.9)]  # lenient: clipped, bad JSON skipped
    lines = pretty_trace(text).splitlines()
    assert lines[0] == "<think>" and lines[1].startswith("  <area>") and lines[-1] == "<answer>yes</answer>"
    assert os.linesep not in "".join(lines)


def test_all_areas_rejects_a_repeated_key_like_the_grammar():
    from sif_jax.generate import all_areas

    broken = '<think><area>[{"bbox_2d": [0.1, 0.1, 0.5, 0.5], "depth": 0.2, "depth": 0.4}]</area> no answer'
    fine = '<think><area>[{"bbox_2d": [0.1, 0.1, 0.5, 0.5], "depth": 0.2}]</area> no answer'
    assert all_areas(broken) == []
    assert all_areas(fine) == [[(0.1, 0.1, 0.5, 0.5)]]
