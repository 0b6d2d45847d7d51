"""Grounding captions: SFT examples whose every word needs the image.

A built-in trace is mostly predictable from the question and the templates (the goal copies the
question, the step texts are templates); only the boxes, some names and the decision need the
image, and a model trained on traces alone learns to write them without looking
(benchmarks/sft_probe.py --other_image; benchmarks/RESULTS.md, "a teacher-forced probe"). A
grounding caption lists every object of the scene from left to right, each as one trace step: its
box (and mean depth) in an <area>, then its name. Nothing in it can be guessed from the text, so
its loss cannot fall without reading the image (the role of LLaVA's caption pre-training stage,
Liu et al. 2023, §4.2 "Stage 1", here in the trace grammar of the task).

    <think><area>[{"bbox_2d":[0.013,0.602,0.175,0.759],"depth":0.137}]</area><text>The purple cone.</text>
    <area>[...]</area><text>The cyan cylinder.</text>...</think><answer>6</answer>

`CaptionMix` replaces a share of a `pipeline.BuiltinSource`'s training examples by the caption of
the same scene (chosen per index, so the data order is the same after a resume). Captions are SFT
data only: evaluation and GRPO keep the four question families.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sif_jax.data.questions import referring_name
from sif_jax.data.scenes import Scene, generate_scene, mean_depth_in_box
from sif_jax.data.traces import Trace, TraceStep, round_box_outward

__all__ = ["CAPTION_PROBLEM", "caption_trace", "caption_example", "CaptionMix"]

CAPTION_PROBLEM = "Name every object from left to right."
FAMILY = "caption"


def caption_trace(scene: Scene) -> Trace:
    """One step per object in order of its visible box's centre x (left to right): the box rounded
    outward, its mean depth, and "The <referring name>."; the answer is the number of objects."""
    order = sorted(scene.objects, key=lambda o: (o.box[0] + o.box[2], o.index))
    steps = []
    for o in order:
        box = round_box_outward(o.box)
        steps.append(TraceStep("target", (box,), (mean_depth_in_box(scene.depth, box),),
                               f"The {referring_name(scene, o)}."))
    return Trace(tuple(steps), str(len(order)))


def caption_example(scene: Scene, index: int) -> dict[str, Any]:
    """The raw example (the fields of `pipeline.BuiltinSource`) of `scene`'s caption: "problem"
    `CAPTION_PROBLEM`, "trace" `caption_trace(scene).text`, "answer" the object count, "boxes"
    float32 [objects, 4] (the written boxes, left to right: the target region), "family" "caption"."""
    trace = caption_trace(scene)
    boxes = np.asarray([s.boxes[0] for s in trace.steps], np.float32).reshape(-1, 4)
    return {
        "id": f"{scene.seed}-{FAMILY}-0",
        "image": scene.image,
        "depth": scene.depth,
        "problem": CAPTION_PROBLEM,
        "answer": trace.answer,
        "choices": [],
        "family": FAMILY,
        "relation": "",
        "split": "familiar",
        "boxes": boxes,
        "trace": trace.text,
        "index": index,
        "scene_seed": scene.seed,
    }


class CaptionMix:
    """A random-access source: example `i` of `source` (a `pipeline.BuiltinSource`), or with
    probability `fraction` (drawn from (seed, i), so fixed per index) the grounding caption of the
    same scene.

    Raises ValueError for a fraction outside [0, 1] or a source without procedural scenes."""

    def __init__(self, source: Any, fraction: float, seed: int = 0) -> None:
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"CaptionMix: fraction={fraction!r} must be in [0, 1]")
        if not hasattr(source, "scene_seed") or not hasattr(source, "scene_config"):
            raise ValueError(f"CaptionMix: {source!r} has no procedural scenes (only the built-in task has)")
        self.source, self.fraction, self.seed = source, float(fraction), int(seed)

    def __len__(self) -> int:
        return len(self.source)

    def is_caption(self, index: int) -> bool:
        """Whether example `index` is a caption: a uniform draw from the generator seeded (seed, index, 11)
        below `fraction`."""
        return bool(np.random.default_rng([self.seed, int(index), 11]).random() < self.fraction)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The raw example `index` (a caption or `source[index]`); IndexError outside [0, len)."""
        index = int(index)
        if not self.is_caption(index):
            return self.source[index]
        if not 0 <= index < len(self.source):
            raise IndexError(f"CaptionMix: index {index} out of range [0, {len(self.source)})")
        return caption_example(generate_scene(self.source.scene_seed(index), self.source.scene_config), index)

    def __repr__(self) -> str:
        return f"CaptionMix({self.source!r}, fraction={self.fraction})"
