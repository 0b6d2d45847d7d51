"""Grounding captions (sif_jax/data/captions.py): the trace lists every object left to right with a box
that contains it, parses under the trace grammar, and `CaptionMix` mixes them in per index."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sif_jax.data import pipeline as pl
from sif_jax.data.captions import CAPTION_PROBLEM, CaptionMix, caption_example, caption_trace
from sif_jax.data.format import check_format
from sif_jax.data.questions import referring_name
from sif_jax.data.scenes import SceneConfig, generate_scene

SCENES = SceneConfig(height=112, width=112)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_caption_lists_every_object_left_to_right_with_a_box_around_it(seed):
    scene = generate_scene(seed, SCENES)
    trace = caption_trace(scene)
    text = trace.text
    assert check_format(text).ok, check_format(text)
    names = re.findall(r"<text>The (.*?)\.</text>", text)
    centres = sorted((o.box[0] + o.box[2], referring_name(scene, o)) for o in scene.objects)
    assert names == [n for _, n in centres]
    assert trace.answer == str(len(scene.objects)) and text.endswith(f"<answer>{len(scene.objects)}</answer>")
    by_name = {referring_name(scene, o): o for o in scene.objects}
    for step, name in zip(trace.steps, names, strict=True):
        (box,) = step.boxes
        ox1, oy1, ox2, oy2 = by_name[name].box
        assert box[0] <= ox1 and box[1] <= oy1 and box[2] >= ox2 and box[3] >= oy2
        assert 0.0 <= step.depths[0] <= 1.0


def test_caption_example_has_the_source_fields():
    source = pl.BuiltinSource(seed=0, size=4, scene_config=SCENES)
    ex = caption_example(generate_scene(source.scene_seed(2), SCENES), 2)
    assert set(ex) == set(source[2])
    assert ex["problem"] == CAPTION_PROBLEM and ex["family"] == "caption" and ex["index"] == 2
    assert ex["boxes"].shape == (len(generate_scene(source.scene_seed(2), SCENES).objects), 4)
    np.testing.assert_array_equal(ex["image"], source[2]["image"])  # the same scene as the question


def test_caption_mix_is_fixed_per_index_and_near_its_fraction():
    source = pl.BuiltinSource(seed=0, size=400, scene_config=SCENES)
    mix = CaptionMix(source, 0.3, seed=5)
    flags = [mix.is_caption(i) for i in range(400)]
    assert 0.22 < np.mean(flags) < 0.38
    assert flags == [CaptionMix(source, 0.3, seed=5).is_caption(i) for i in range(400)]  # resume: same order
    first = next(i for i, f in enumerate(flags) if f)
    other = next(i for i, f in enumerate(flags) if not f)
    assert mix[first]["family"] == "caption" and mix[other]["id"] == source[other]["id"]
    assert not any(CaptionMix(source, 0.0).is_caption(i) for i in range(50))
    assert all(CaptionMix(source, 1.0).is_caption(i) for i in range(50))
    with pytest.raises(IndexError, match="400"):
        CaptionMix(source, 1.0)[400]


def test_caption_mix_errors_name_the_problem():
    source = pl.BuiltinSource(seed=0, size=4, scene_config=SCENES)
    with pytest.raises(ValueError, match=r"fraction=1\.5"):
        CaptionMix(source, 1.5)
    with pytest.raises(ValueError, match="no procedural scenes"):
        CaptionMix([{"id": "x"}], 0.5)


def test_caption_fraction_needs_the_builtin_task():
    from configs import grpo
    from sif_jax import run_config

    c = grpo.get_config()
    c.sft.caption_fraction = 1.5
    with pytest.raises(ValueError, match=r"config\.sft\.caption_fraction=1\.5: must lie in \[0, 1\]"):
        run_config.from_config_dict(c)
    c = grpo.get_config()
    c.sft.caption_fraction = 0.5
    c.data.source = "sif_json:/data/sif50k.json"
    with pytest.raises(ValueError, match=r"config\.sft\.caption_fraction=0\.5: grounding captions need the "
                                         r"built-in task's scenes, not config\.data\.source='sif_json:"):
        run_config.build(c, check_files=False)
    c.data.source = "builtin"
    assert run_config.build(c, check_files=False).sft.caption_fraction == 0.5
