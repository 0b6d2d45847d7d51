"""Spatial questions with exact answers, computed from a scene's 3-D ground truth.

Families
  relation   "Is the red cube to the left of the blue sphere?" (yes/no), or
             "Which is closer to the camera, the red cube or the blue sphere?" (one of two names).
  attribute  "What colour is the object to the left of the blue sphere?" /
             "What shape is the object nearest to the blue sphere?" — asked only when exactly one
             object fits.
  count      "How many red objects are there?" (>= 1, so there is always a target box).
  nearest    "Which object is nearest to (farthest from) the camera?"

Relations and what decides them (world X right, Z forward, see `scenes`):
  left of / right of            3-D X of the two objects; asked only when the visible boxes'
                                centres are ordered the same way in the image, both by a margin.
  above / below                 image rows of the visible boxes' centres (objects all stand on
                                the ground, so "above" is the picture-plane sense).
  in front of / behind,         camera depth Z.
  closer than / farther than
  nearest to                    ground-plane distance between object centres.
A question is only asked when its deciding quantity clears a margin, so no answer is a tie.

Familiar vs unfamiliar: for relation number k of `RELATIONS` the anchor shape
`SHAPES[k % len(SHAPES)]` is held out (`is_unfamiliar`), so a model trained on the familiar
split never sees e.g. "... to the left of the <sphere>"; AdaptVis-style effects are measured on
the unfamiliar split. Families without an anchor (count, nearest) are familiar.

Every question names its target objects (indices into `scene.objects`) and their visible boxes:
subject then anchor for relations, the answered object then the anchor for attributes, all
counted objects for counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from sif_jax.data.scenes import COLORS, SHAPES, SIZES, Scene, SceneObject

RELATIONS: tuple[str, ...] = (
    "left of",
    "right of",
    "above",
    "below",
    "in front of",
    "behind",
    "closer than",
    "farther than",
    "nearest to",
)
FAMILIES: tuple[str, ...] = ("relation", "attribute", "count", "nearest")

RELATION_PHRASES = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
    "in front of": "in front of",
    "behind": "behind",
    "closer than": "closer to the camera than",
    "farther than": "farther from the camera than",
    "nearest to": "nearest to",
}


@dataclasses.dataclass(frozen=True)
class Margins:
    """Minimum separations for a relation to be asked (no near-ties)."""

    x_world: float = 0.3  # world units between X coordinates
    x_image: float = 0.03  # normalised image width between box centres
    y_image: float = 0.05  # normalised image height between box centres
    z_world: float = 0.75  # world units between camera depths
    nearest_ratio: float = 1.3  # second-nearest distance / nearest distance


@dataclasses.dataclass(frozen=True)
class Question:
    """One question about one scene.

    target_indices: indices into `scene.objects`; target_boxes: their visible boxes,
    normalised [x1, y1, x2, y2]. choices: the options for the multiple-choice form, None for
    short answer; `answer` is always one of `choices` when they are given. params: the
    structured question (subject/anchor indices, attribute, form) for scoring and tests.
    """

    id: str
    family: str
    relation: str | None
    split: str
    text: str
    answer: str
    choices: tuple[str, ...] | None
    target_indices: tuple[int, ...]
    target_boxes: tuple[tuple[float, float, float, float], ...]
    params: dict[str, Any]


def is_unfamiliar(relation: str | None, anchor_shape: str | None) -> bool:
    """True for the held-out (relation, anchor shape) pairs: one shape per relation."""
    if relation is None or anchor_shape is None:
        return False
    k = RELATIONS.index(relation)
    return SHAPES.index(anchor_shape) == k % len(SHAPES)


def referring_name(scene: Scene, obj: SceneObject) -> str:
    """"red cube", or "large red cube" when the scene has another red cube."""
    same = [o for o in scene.objects if (o.color, o.shape) == (obj.color, obj.shape)]
    return obj.name if len(same) == 1 else f"{obj.size} {obj.name}"


def relation_holds(
    relation: str, a: SceneObject, b: SceneObject, margins: Margins
) -> bool | None:
    """Whether `a <relation> b`; None when the margin is not cleared (the question is skipped)."""
    (ax, _, az), (bx, _, bz) = a.position, b.position
    (acx, acy), (bcx, bcy) = a.center, b.center
    if relation in ("left of", "right of"):
        dx, du = ax - bx, acx - bcx
        if abs(dx) < margins.x_world or abs(du) < margins.x_image or np.sign(dx) != np.sign(du):
            return None
        return (dx < 0) == (relation == "left of")
    if relation in ("above", "below"):
        dv = acy - bcy
        if abs(dv) < margins.y_image:
            return None
        return (dv < 0) == (relation == "above")
    if relation in ("in front of", "behind", "closer than", "farther than"):
        dz = az - bz
        if abs(dz) < margins.z_world:
            return None
        return (dz < 0) == (relation in ("in front of", "closer than"))
    raise ValueError(f"relation={relation!r}: not a pairwise relation")


def _ground_distance(a: SceneObject, b: SceneObject) -> float:
    return float(np.hypot(a.position[0] - b.position[0], a.position[2] - b.position[2]))


def _make(
    scene: Scene,
    qid: str,
    family: str,
    relation: str | None,
    anchor: SceneObject | None,
    text: str,
    answer: str,
    choices: Sequence[str] | None,
    targets: Sequence[int],
    params: dict[str, Any],
) -> Question:
    if choices is not None:
        text = f"{text} Answer with one of: {', '.join(choices)}."
    split = "unfamiliar" if is_unfamiliar(relation, anchor.shape if anchor else None) else "familiar"
    return Question(
        id=qid,
        family=family,
        relation=relation,
        split=split,
        text=text,
        answer=answer,
        choices=tuple(choices) if choices is not None else None,
        target_indices=tuple(int(t) for t in targets),
        target_boxes=tuple(scene.objects[t].box for t in targets),
        params=params,
    )


def _relation_candidates(scene: Scene, rng: np.random.Generator, m: Margins, mc: bool):
    objs = scene.objects
    out = []
    for a in objs:
        for b in objs:
            if a.index == b.index:
                continue
            for rel in RELATIONS[:-1]:
                holds = relation_holds(rel, a, b, m)
                if holds is None:
                    continue
                na, nb = referring_name(scene, a), referring_name(scene, b)
                if rel in ("closer than", "farther than") and rng.random() < 0.5:
                    # "Which is closer ..., A or B?" — answer names the object for which it holds.
                    order = [na, nb] if rng.random() < 0.5 else [nb, na]
                    word = "closer to" if rel == "closer than" else "farther from"
                    text = f"Which is {word} the camera, the {order[0]} or the {order[1]}?"
                    answer = na if holds else nb
                    params = {"form": "which", "subject": a.index, "anchor": b.index}
                    out.append((rel, b, text, answer, order if mc else None, (a.index, b.index),
                                params))
                    continue
                text = f"Is the {na} {RELATION_PHRASES[rel]} the {nb}?"
                params = {"form": "yesno", "subject": a.index, "anchor": b.index}
                out.append((rel, b, text, "yes" if holds else "no", ["yes", "no"] if mc else None,
                            (a.index, b.index), params))
    return out


def _attribute_candidates(scene: Scene, rng: np.random.Generator, m: Margins, mc: bool):
    objs = scene.objects
    out = []
    for anchor in objs:
        others = [o for o in objs if o.index != anchor.index]
        for rel in RELATIONS:
            if rel == "nearest to":
                if len(others) < 1:
                    continue
                dists = sorted((_ground_distance(o, anchor), o.index) for o in others)
                if len(dists) > 1 and dists[1][0] < m.nearest_ratio * dists[0][0]:
                    continue
                fits = [objs[dists[0][1]]]
            else:
                verdicts = [relation_holds(rel, o, anchor, m) for o in others]
                if any(v is None for v in verdicts):
                    continue  # some object is too close to call: the question would be unclear
                fits = [o for o, v in zip(others, verdicts, strict=True) if v]
            if len(fits) != 1:
                continue
            target = fits[0]
            attribute = "color" if rng.random() < 0.5 else "shape"
            answer = target.color if attribute == "color" else target.shape
            word = "colour" if attribute == "color" else "shape"
            text = f"What {word} is the object {RELATION_PHRASES[rel]} the {referring_name(scene, anchor)}?"
            choices = None
            if mc:
                pool = list(COLORS) if attribute == "color" else list(SHAPES)
                wrong = [p for p in pool if p != answer]
                picks = list(rng.choice(wrong, size=min(3, len(wrong)), replace=False))
                choices = sorted([answer, *picks])
            params = {"form": "attribute", "subject": target.index, "anchor": anchor.index,
                      "attribute": attribute}
            out.append((rel, anchor, text, answer, choices, (target.index, anchor.index), params))
    return out


def _count_candidates(scene: Scene, rng: np.random.Generator, mc: bool):
    out = []
    keys = (
        [("color", c) for c in COLORS]
        + [("shape", s) for s in SHAPES]
        + [("size", z) for z in SIZES]
    )
    for attribute, value in keys:
        hits = [o.index for o in scene.objects if getattr(o, attribute) == value]
        if not hits:
            continue
        noun = f"{value}s" if attribute == "shape" else f"{value} objects"
        text = f"How many {noun} are there?"
        answer = str(len(hits))
        choices = None
        if mc:
            wrong = [str(k) for k in range(1, 8) if k != len(hits)]
            choices = sorted([answer, *rng.choice(wrong, size=3, replace=False)], key=int)
        params = {"form": "count", "attribute": attribute, "value": value}
        out.append((None, None, text, answer, choices, tuple(hits), params))
    return out


def _nearest_candidates(scene: Scene, rng: np.random.Generator, m: Margins, mc: bool):
    out = []
    by_z = sorted(scene.objects, key=lambda o: o.position[2])
    for which, order in (("nearest", by_z), ("farthest", by_z[::-1])):
        if len(order) < 2 or abs(order[0].position[2] - order[1].position[2]) < m.z_world:
            continue
        target = order[0]
        word = "nearest to" if which == "nearest" else "farthest from"
        text = f"Which object is {word} the camera?"
        answer = referring_name(scene, target)
        choices = None
        if mc:
            names = [referring_name(scene, o) for o in scene.objects if o.index != target.index]
            picks = list(rng.choice(names, size=min(3, len(names)), replace=False))
            choices = sorted([answer, *picks])
        params = {"form": which}
        out.append((which, None, text, answer, choices, (target.index,), params))
    return out


def _balanced_count_picks(cands: Sequence[tuple], rng: np.random.Generator, k: int) -> list[int]:
    """Up to `k` count candidates, drawn answer first: a count value uniformly among the scene's
    values, then one of its questions. Drawn uniformly over questions instead, "1" (one red
    object among 2-6 objects of 8 colours) would be ~63% of the count answers, which a model
    can reach without looking; answer-first drawing brings it to ~45% (`data.chance`)."""
    by_answer: dict[str, list[int]] = {}
    for i, c in enumerate(cands):
        by_answer.setdefault(c[3], []).append(i)
    values = sorted(by_answer, key=int)
    picks: list[int] = []
    for v in rng.permutation(len(values)):
        group = by_answer[values[int(v)]]
        picks.append(group[int(rng.integers(len(group)))])
    picks += [i for i in rng.permutation(len(cands)) if int(i) not in picks]
    return [int(i) for i in picks[:k]]


def generate_questions(
    scene: Scene,
    seed: int,
    per_family: int = 1,
    multiple_choice_prob: float = 0.5,
    families: Sequence[str] = FAMILIES,
    margins: Margins | None = None,
) -> list[Question]:
    """Up to `per_family` questions of each family for `scene`, deterministic given `seed`.

    A family with no unambiguous question in this scene contributes none. Ids are
    `"{scene.seed}-{family}-{k}"`. Count questions are drawn answer first
    (`_balanced_count_picks`), the others uniformly among the scene's candidates.
    """
    margins = margins or Margins()
    rng = np.random.default_rng([seed, scene.seed])
    out: list[Question] = []
    for family in families:
        if family not in FAMILIES:
            raise ValueError(f"family={family!r}: expected one of {FAMILIES}")
        mc = bool(rng.random() < multiple_choice_prob)
        if family == "relation":
            cands = _relation_candidates(scene, rng, margins, mc)
        elif family == "attribute":
            cands = _attribute_candidates(scene, rng, margins, mc)
        elif family == "count":
            cands = _count_candidates(scene, rng, mc)
        else:
            cands = _nearest_candidates(scene, rng, margins, mc)
        if not cands:
            continue
        picks = _balanced_count_picks(cands, rng, per_family) if family == "count" else \
            rng.permutation(len(cands))[:per_family]
        for k, p in enumerate(picks):
            rel, anchor, text, answer, choices, targets, params = cands[int(p)]
            out.append(
                _make(scene, f"{scene.seed}-{family}-{k}", family, rel, anchor, text, answer,
                      choices, targets, params)
            )
    return out


def sample_question(scene: Scene, seed: int, margins: Margins | None = None) -> Question:
    """One question of a family drawn uniformly among those the scene supports."""
    rng = np.random.default_rng([seed, scene.seed, 1])
    order = [FAMILIES[i] for i in rng.permutation(len(FAMILIES))]
    for family in order:
        qs = generate_questions(scene, seed, 1, families=(family,), margins=margins)
        if qs:
            return qs[0]
    raise ValueError(f"scene {scene.seed}: no question could be asked")  # count always exists
