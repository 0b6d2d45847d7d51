"""Training on files in the seeds' formats: SIF-50K records with Spectral_r depth PNGs through SFT then
GRPO with SIFThinker's two-image prompt (RGB + depth picture), and SAYO parquet records through GRPO (tiny
model, a step or two, 112 px images)."""

import io
import json
import os

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sif_jax import train
from sif_jax.run_config import validate_config

from .conftest import tiny_run_config

pytestmark = pytest.mark.slow


def _spectral_depth(size, near_top=True):
    palette = (matplotlib.colormaps["Spectral_r"](np.arange(256))[:, :3] * 255).astype(np.uint8)
    index = np.linspace(255 if near_top else 0, 0 if near_top else 255, size).astype(int)
    return palette[index][:, None].repeat(size, axis=1)


def _sif50k(root, n=4):
    """SIF-50K records as SIFThinker's produce.py writes them (image / depth paths, trace in messages)."""
    rows = []
    for i in range(n):
        image = root / "data" / "viscot" / f"img{i}.jpg"
        depth = root / "data" / "viscot" / f"img{i}_d.png"
        os.makedirs(image.parent, exist_ok=True)
        Image.fromarray(np.full((112, 112, 3), (40 * i, 120, 200), np.uint8)).save(image)
        Image.fromarray(_spectral_depth(112)).save(depth)
        trace = ('<think><area>[{"bbox_2d":[0.1,0.2,0.5,0.6],"depth":0.7}]</area><text>The cube.</text></think>'
                 "<answer>left</answer>")
        rows.append({"dataset": "gqa", "image": f"../data/viscot/img{i}.jpg",
                     "depth_image": f"../data/viscot/img{i}_d.png", "problem": "Where is the cube?",
                     "normalized_solution_round": {"bbox_3d": [[0.1, 0.2, 0.5, 0.6]], "illegal_content": False},
                     "response": "left",
                     "messages": [{"content": "Original image: <image>\nDepth image: <image>\nWhere is the cube?",
                                   "role": "user"}, {"content": trace, "role": "assistant"}],
                     "images": [f"../data/viscot/img{i}.jpg", f"../data/viscot/img{i}_d.png"]})
    path = root / "SIF-50K.json"
    path.write_text(json.dumps(rows, indent=4))
    return path


def _small(config):
    config.data.length_buckets = (128, 384, 768)
    config.data.eval_examples = 1
    config.grpo.steps = 1
    config.grpo.max_new_tokens = 4
    return config


def test_sft_then_grpo_on_sif50k_records(tmp_path, capsys):
    path = _sif50k(tmp_path)
    config = _small(tiny_run_config(str(tmp_path / "run")))
    config.data.source = f"sif_json:{path}"
    config.data.prompt = "sifthinker"
    config.sft.steps = 1  # one step: a warm-up and cosine schedule that optax accepts
    config.sft.batch_size = 2
    validate_config(config)
    summary = train.run(config)
    assert summary["before"]["examples"] == 1 and summary["after"]["examples"] == 1
    rows = [json.loads(x) for x in open(tmp_path / "run" / "sft_metrics.jsonl")]
    assert [r["step"] for r in rows] == [1] and np.isfinite(rows[0]["sft_loss"])
    out = capsys.readouterr().out
    assert "held-out after GRPO" in out and "summary: " in out

    again = train.run(config)  # a re-run resumes and says so
    assert "SFT: resumed from step 1 of 1" in capsys.readouterr().out
    assert again["after"] == summary["after"]

    # SIFThinker's prompt: every row carries the RGB image, then the depth picture; the region is in the RGB one.
    run_, _ = train._setup(config)
    batch = next(run_.data.grpo_iterator(config.grpo.prompts_per_step))
    rows = batch.inputs.input_ids.shape[0]
    assert batch.inputs.image_grid_thw.shape == (2 * rows, 3) and batch.inputs.pixel_values.shape[0] == 2 * rows
    assert (batch.inputs.input_ids == run_.model.vision_start_token_id).sum(axis=1).tolist() == [2] * rows
    for row in range(rows):
        first_image_end = np.flatnonzero(batch.inputs.input_ids[row] == run_.model.vision_end_token_id)[0]
        assert batch.region_mask[row].any() and np.flatnonzero(batch.region_mask[row]).max() < first_image_end


def test_grpo_on_sayo_parquet(tmp_path):
    rows = []
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(np.full((112, 112, 3), 60 * i, np.uint8)).save(buf, format="PNG")
        rows.append({"id": f"sayo-{i}", "type": "spatial", "question": "Where is the cup?",
                     "answer": "The cup is on the left.", "short_answer": "left", "image": buf.getvalue(),
                     "focus_area": [[0, 1], [4, 5]]})  # the top-left 2 x 2 of the 4 x 4 grid
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "sayo.parquet")
    config = _small(tiny_run_config(str(tmp_path / "run")))
    config.data.source = f"sayo:{tmp_path / 'sayo.parquet'}"
    config.data.prompt = "sayo"
    config.rewards.sayo_format = 1.0
    validate_config(config)
    run_, params = train._setup(config)
    batch = next(run_.data.grpo_iterator(config.grpo.prompts_per_step))
    assert batch.region_tokens.tolist() == [4] * batch.region_tokens.shape[0]  # 4 of 16 visual tokens
    summary = train._run_phases(run_, params, stop_after=None)
    assert summary["after"]["examples"] == 1 and "tas" in summary["after"]


def test_sft_on_records_without_traces_says_so(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((56, 56, 3), np.uint8)).save(buf, format="PNG")
    rows = [{"id": f"s{i}", "question": "q?", "answer": "a", "image": buf.getvalue(), "focus_area": [[0, 0]]}
            for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "sayo.parquet")
    config = _small(tiny_run_config(str(tmp_path / "run")))
    config.data.source = f"sayo:{tmp_path / 'sayo.parquet'}"
    config.sft.steps = 2
    with pytest.raises(ValueError, match=r"config.sft.steps=2: .* has no assistant traces.*--config.sft.steps=0"):
        train._setup(config)
