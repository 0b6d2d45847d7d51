"""Reverse-expansion-forward-inference (METHODS §1): coarse -> fine box chains and their traces.

Reverse expansion, from the ground-truth boxes B0 (normalised [x1, y1, x2, y2]):
  1. grow every box outward by `expand_ratio` of the margin left to the image border on each
     side, clip to [0, 1], and merge overlapping boxes into their union -> B1;
  2. if B1 has several boxes, add their enclosing box;
  3. with probability `distractor_prob` add a distractor: the merged (enclosing) box enlarged
     by 20%, rescaled by U[0.7, 1.3], moved to a neighbouring position that does not overlap it
     (IoU < 0.001) — an "attention correction" detour; skipped if no position fits the image;
  4. add the whole image.
Forward inference walks the chain coarse -> fine (image -> distractor -> enclosing -> B1 -> B0);
each step carries its box(es), their mean depth, and a text written from the scene's ground
truth with templates (the original asks an external MLLM; `build_trace_from_steps` accepts
externally written texts for real data).

Boxes are written rounded *outward* to 3 decimals (x1, y1 down; x2, y2 up) so a written box
still contains its object; depths are the mean normalised depth inside the written box.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from sif_jax.data.format import FormatResult, area_json, check_format, fmt_number
from sif_jax.data.questions import RELATION_PHRASES, Question, referring_name
from sif_jax.data.scenes import Scene, SceneObject, mean_depth_in_box

__all__ = [
    "FormatResult", "TraceConfig", "TraceStep", "Trace", "check_format", "expand_boxes",
    "merge_overlapping", "enclosing_box", "iou", "distractor_box", "reverse_expand",
    "round_box_outward", "build_trace", "build_trace_from_steps",
]

Box = tuple[float, float, float, float]
WHOLE_IMAGE: Box = (0.0, 0.0, 1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class TraceConfig:
    expand_ratio: float = 0.3  # share of the margin to the border that one expansion step takes
    expand_max_grow: float = 1.0  # ... capped at this many times the box's own side
    distractor_prob: float = 0.5
    distractor_enlarge: float = 1.2
    distractor_scale: tuple[float, float] = (0.7, 1.3)
    distractor_max_iou: float = 0.001
    distractor_gap: float = 0.02  # normalised gap between the merged box and the distractor


@dataclasses.dataclass(frozen=True)
class TraceStep:
    """One (area, text) pair. kind: image | distractor | enclosing | expanded | target."""

    kind: str
    boxes: tuple[Box, ...]
    depths: tuple[float, ...]
    text: str


@dataclasses.dataclass(frozen=True)
class Trace:
    steps: tuple[TraceStep, ...]
    answer: str

    @property
    def text(self) -> str:
        """`<think><area>[...]</area><text>...</text>...</think><answer>...</answer>`."""
        parts = [
            f"<area>{area_json(s.boxes, s.depths)}</area><text>{s.text}</text>" for s in self.steps
        ]
        return f"<think>{''.join(parts)}</think><answer>{self.answer}</answer>"


# ---------------------------------------------------------------------------- box geometry


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two normalised boxes (0 for empty boxes)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def expand_boxes(
    boxes: Sequence[Sequence[float]], ratio: float, max_grow: float = 1.0
) -> list[Box]:
    """Each side moves `ratio` of the way to the image border (so steps shrink near borders),
    but by at most `max_grow` times the box's own side — without the cap a small far object's
    box would jump to a third of the image in one step, which is no longer a zoom."""
    out = []
    for x1, y1, x2, y2 in boxes:
        gw, gh = max_grow * (x2 - x1), max_grow * (y2 - y1)
        out.append((
            max(0.0, x1 - min(ratio * x1, gw)),
            max(0.0, y1 - min(ratio * y1, gh)),
            min(1.0, x2 + min(ratio * (1.0 - x2), gw)),
            min(1.0, y2 + min(ratio * (1.0 - y2), gh)),
        ))
    return out


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def enclosing_box(boxes: Sequence[Sequence[float]]) -> Box:
    return (
        min(b[0] for b in boxes), min(b[1] for b in boxes),
        max(b[2] for b in boxes), max(b[3] for b in boxes),
    )


def merge_overlapping(boxes: Sequence[Sequence[float]]) -> list[Box]:
    """Replaces overlapping boxes by their enclosing box until no two overlap (order kept)."""
    out = [tuple(float(v) for v in b) for b in boxes]
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                if _overlap(out[i], out[j]):
                    out[i] = enclosing_box([out[i], out[j]])
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return out  # type: ignore[return-value]


def distractor_box(
    merged: Sequence[float], rng: np.random.Generator, config: TraceConfig
) -> Box | None:
    """A box beside `merged` (IoU < max_iou), 1.2x its size times U[0.7, 1.3]; None if none fits."""
    x1, y1, x2, y2 = merged
    scale = config.distractor_enlarge * rng.uniform(*config.distractor_scale)
    w, h = (x2 - x1) * scale, (y2 - y1) * scale
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    g = config.distractor_gap
    # Neighbours: left, right, above, below, and the four diagonals; try them in random order.
    offsets = [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, -1), (-1, 1), (1, 1)]
    for k in rng.permutation(len(offsets)):
        dx, dy = offsets[int(k)]
        ncx = cx + dx * ((x2 - x1) / 2 + g + w / 2)
        ncy = cy + dy * ((y2 - y1) / 2 + g + h / 2)
        box = (max(0.0, ncx - w / 2), max(0.0, ncy - h / 2),
               min(1.0, ncx + w / 2), min(1.0, ncy + h / 2))
        # Clipped by the border it must keep most of its size, or it is not a real detour.
        if (box[2] - box[0]) < 0.6 * w or (box[3] - box[1]) < 0.6 * h:
            continue
        if iou(round_box_outward(box), round_box_outward(merged)) < config.distractor_max_iou:
            return box
    return None


def round_box_outward(box: Sequence[float]) -> Box:
    """Rounds x1, y1 down and x2, y2 up to 3 decimals (the written box contains the true one)."""
    # The 1e-9 guards keep exact thousandths (0.3 * 1000 = 300.00000000000006) where they are.
    x1 = math.floor(box[0] * 1000 + 1e-9) / 1000
    y1 = math.floor(box[1] * 1000 + 1e-9) / 1000
    x2 = math.ceil(box[2] * 1000 - 1e-9) / 1000
    y2 = math.ceil(box[3] * 1000 - 1e-9) / 1000
    return (max(0.0, x1), max(0.0, y1), min(1.0, x2), min(1.0, y2))


def reverse_expand(
    target_boxes: Sequence[Sequence[float]], rng: np.random.Generator, config: TraceConfig
) -> list[tuple[str, list[Box]]]:
    """The chain coarse -> fine as (kind, boxes): image, [distractor], [enclosing], expanded,
    target. Boxes are rounded outward to 3 decimals."""
    if not target_boxes:
        raise ValueError("reverse_expand: target_boxes is empty; a trace needs a target")
    b0 = [tuple(float(v) for v in b) for b in target_boxes]
    b1 = merge_overlapping(expand_boxes(b0, config.expand_ratio, config.expand_max_grow))
    merged = enclosing_box(b1)
    chain: list[tuple[str, list[Box]]] = [("image", [WHOLE_IMAGE])]
    if rng.random() < config.distractor_prob:
        d = distractor_box(merged, rng, config)
        if d is not None:
            chain.append(("distractor", [d]))
    if len(b1) > 1:
        chain.append(("enclosing", [merged]))
    chain.append(("expanded", b1))
    chain.append(("target", b0))  # type: ignore[arg-type]
    return [(kind, [round_box_outward(b) for b in boxes]) for kind, boxes in chain]


# ---------------------------------------------------------------------------- texts


def _names(names: Sequence[str]) -> str:
    names = [f"the {n}" for n in names]
    if not names:
        return "only the ground"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _inside(scene: Scene, box: Sequence[float]) -> list[SceneObject]:
    """Objects whose visible box lies mostly (>= 50% of its area) inside `box`."""
    out = []
    for o in scene.objects:
        ox1, oy1, ox2, oy2 = o.box
        ix = max(0.0, min(ox2, box[2]) - max(ox1, box[0]))
        iy = max(0.0, min(oy2, box[3]) - max(oy1, box[1]))
        if ix * iy >= 0.5 * (ox2 - ox1) * (oy2 - oy1):
            out.append(o)
    return out


def _goal(scene: Scene, q: Question) -> str:
    p = q.params
    objs = scene.objects
    if q.family == "relation":
        a, b = objs[p["subject"]], objs[p["anchor"]]
        return f"I need to compare the {referring_name(scene, a)} and the {referring_name(scene, b)}."
    if q.family == "attribute":
        anchor = referring_name(scene, objs[p["anchor"]])
        return f"I need to find the object {RELATION_PHRASES[q.relation]} the {anchor}."
    if q.family == "count":
        return f"I need to count the {p['value']} {'objects' if p['attribute'] != 'shape' else 'ones'}."
    return f"I need the object {'nearest to' if p['form'] == 'nearest' else 'farthest from'} the camera."


def _conclusion(scene: Scene, q: Question) -> str:
    """The last step's text. Depths quoted here are the objects' own depths (monotone in camera
    Z), not the box means of the areas, so the stated order always matches the answer."""
    p = q.params
    objs = scene.objects
    depths = [objs[i].object_depth for i in q.target_indices]
    if q.family == "relation":
        a, b = objs[p["subject"]], objs[p["anchor"]]
        na, nb = referring_name(scene, a), referring_name(scene, b)
        da, db = fmt_number(depths[0]), fmt_number(depths[1])
        if p["form"] == "which":
            return f"The {na} is at depth {da} and the {nb} at depth {db}, so the answer is the {q.answer}."
        verb = "is" if q.answer == "yes" else "is not"
        return f"The {na} (depth {da}) {verb} {RELATION_PHRASES[q.relation]} the {nb} (depth {db})."
    if q.family == "attribute":
        t, anchor = objs[p["subject"]], objs[p["anchor"]]
        return (f"The object {RELATION_PHRASES[q.relation]} the {referring_name(scene, anchor)} is the "
                f"{referring_name(scene, t)}, so its {'colour' if p['attribute'] == 'color' else 'shape'} "
                f"is {q.answer}.")
    if q.family == "count":
        names = [referring_name(scene, objs[i]) for i in q.target_indices]
        return f"I count {len(names)} here: {_names(names)}."
    t = objs[q.target_indices[0]]
    word = "smallest" if p["form"] == "nearest" else "largest"
    return f"The {referring_name(scene, t)} has the {word} depth ({fmt_number(depths[0])})."


_IMAGE_T = (
    "The whole image shows {n} objects on the ground. {goal}",
    "I look at the full scene first: {names}. {goal}",
    "Starting from the entire view (mean depth {d}). {goal}",
)
_DISTRACTOR_T = (
    "This area holds {names}, which is not what the question is about, so I look elsewhere.",
    "At first this region seems relevant, but it shows {names}; I correct my focus.",
    "Checking this part (depth {d}): {names}. Not relevant here.",
)
_ENCLOSING_T = (
    "The relevant objects all lie inside this region (mean depth {d}).",
    "Narrowing down to the area that covers {names}.",
)
_EXPANDED_T = (
    "Zooming in around {names}.",
    "Closer to the relevant objects now; this region contains {names}.",
    "The candidates are in this part of the image, at mean depth {d}.",
)


def build_trace(
    scene: Scene, question: Question, seed: int, config: TraceConfig | None = None
) -> Trace:
    """The ground-truth trace for `question` about `scene`, deterministic given `seed`."""
    config = config or TraceConfig()
    rng = np.random.default_rng([seed, scene.seed, 7])
    chain = reverse_expand(question.target_boxes, rng, config)
    steps = []
    for kind, boxes in chain:
        depths = tuple(mean_depth_in_box(scene.depth, b) for b in boxes)
        d = fmt_number(float(np.mean(depths)))
        inside = sorted({o.index for b in boxes for o in _inside(scene, b)})
        names = _names([referring_name(scene, scene.objects[i]) for i in inside])
        fields = {"n": len(scene.objects), "goal": _goal(scene, question), "d": d, "names": names}
        if kind == "target":
            text = _conclusion(scene, question)
        else:
            table = {"image": _IMAGE_T, "distractor": _DISTRACTOR_T, "enclosing": _ENCLOSING_T,
                     "expanded": _EXPANDED_T}[kind]
            text = table[int(rng.integers(len(table)))].format(**fields)
        steps.append(TraceStep(kind, tuple(boxes), depths, text))
    return Trace(tuple(steps), question.answer)


def build_trace_from_steps(
    boxes_per_step: Sequence[Sequence[Sequence[float]]],
    texts: Sequence[str],
    answer: str,
    depth: np.ndarray,
) -> Trace:
    """A trace from externally written step texts (real data): depths come from `depth`
    (float [H, W] normalised), boxes are rounded outward to 3 decimals."""
    if len(boxes_per_step) != len(texts):
        raise ValueError(
            f"build_trace_from_steps: {len(boxes_per_step)} box steps but {len(texts)} texts"
        )
    steps = []
    for boxes, text in zip(boxes_per_step, texts, strict=True):
        rounded = tuple(round_box_outward(b) for b in boxes)
        depths = tuple(mean_depth_in_box(depth, b) for b in rounded)
        steps.append(TraceStep("step", rounded, depths, text))
    return Trace(tuple(steps), answer)
