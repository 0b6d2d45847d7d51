"""Chance accuracy of the built-in task, per question family (what a model that ignores the image scores).

Two baselines, both computed from the generator's own questions (`scenes.generate_scene` +
`questions.sample_question`, the examples `pipeline.BuiltinSource` serves):

  uniform   the expected accuracy of guessing uniformly among the answers the question allows
            (`answer_options`): its listed choices when it is multiple choice; otherwise yes/no,
            the two objects a "which is closer" question names, the 8 colours or 4 shapes of an
            attribute question, the counts 1..max_objects, or the scene's objects for
            nearest/farthest (a guesser that can list the objects but not judge depth).
            Per question 1/k, or 0 when the answer is not among the k options.
  majority  the share of the family's most frequent answer: the accuracy of always giving it,
            the best a model that reads only the family can do.

    python -m sif_jax.data.chance --num=2000
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Sequence
from typing import Any

from sif_jax.data.questions import FAMILIES, Question, referring_name, sample_question
from sif_jax.data.scenes import COLORS, SHAPES, Scene, SceneConfig, generate_scene


def answer_options(question: Question, scene: Scene) -> tuple[str, ...]:
    """The answers `question` allows (see the module doc). Raises ValueError for an unknown form."""
    if question.choices is not None:
        return tuple(question.choices)
    p = question.params
    form = p.get("form")
    if form == "yesno":
        return ("yes", "no")
    if form == "which":
        return (referring_name(scene, scene.objects[p["subject"]]), referring_name(scene, scene.objects[p["anchor"]]))
    if form == "attribute":
        return tuple(COLORS) if p["attribute"] == "color" else tuple(SHAPES)
    if form == "count":
        return tuple(str(k) for k in range(1, scene.config.max_objects + 1))
    if form in ("nearest", "farthest"):
        return tuple(referring_name(scene, o) for o in scene.objects)
    raise ValueError(f"question {question.id!r}: params form={form!r} is not a known question form")


def uniform_chance(question: Question, scene: Scene) -> float:
    """1 / len(answer_options) when the answer is among them, else 0."""
    options = answer_options(question, scene)
    return 1.0 / len(options) if question.answer in options else 0.0


def builtin_examples(num: int, seed: int = 0, scene_config: SceneConfig | None = None,
                     offset: int = 0) -> list[tuple[Scene, Question]]:
    """The first `num` (scene, question) pairs of `BuiltinSource(seed=seed, split="train")`
    (scene seed = offset + index + seed * 2**32, the question drawn with the same seed)."""
    if num < 1:
        raise ValueError(f"builtin_examples: num={num} must be >= 1")
    from sif_jax.data.pipeline import SEED_STRIDE

    out = []
    for index in range(offset, offset + num):
        s = index + seed * SEED_STRIDE
        scene = generate_scene(s, scene_config)
        out.append((scene, sample_question(scene, s)))
    return out


def chance_by_family(examples: Sequence[tuple[Scene, Question]]) -> dict[str, dict[str, Any]]:
    """{family: {examples, share, uniform, majority, majority_answer}} over `examples`
    (`builtin_examples`); share is the family's fraction of all examples."""
    by_family: dict[str, list[tuple[Scene, Question]]] = collections.defaultdict(list)
    for scene, q in examples:
        by_family[q.family].append((scene, q))
    out: dict[str, dict[str, Any]] = {}
    for family in FAMILIES:
        rows = by_family.get(family)
        if not rows:
            continue
        answers = collections.Counter(q.answer for _, q in rows)
        top, n_top = answers.most_common(1)[0]
        out[family] = {
            "examples": len(rows),
            "share": len(rows) / len(examples),
            "uniform": sum(uniform_chance(q, s) for s, q in rows) / len(rows),
            "majority": n_top / len(rows),
            "majority_answer": top,
        }
    return out


def format_chance_table(table: dict[str, dict[str, Any]]) -> str:
    """A markdown table of `chance_by_family`."""
    lines = ["| family | examples | share | uniform chance | majority answer | majority accuracy |",
             "|---|---|---|---|---|---|"]
    for family, r in table.items():
        lines.append(f"| {family} | {r['examples']} | {r['share']:.3f} | {r['uniform']:.3f} | "
                     f"{r['majority_answer']} | {r['majority']:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Chance accuracy of the built-in task per question family.")
    parser.add_argument("--num", type=int, default=2000, help="examples to draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    args = parser.parse_args(argv)
    config = SceneConfig(height=args.size, width=args.size)
    print(format_chance_table(chance_by_family(builtin_examples(args.num, args.seed, config))))


if __name__ == "__main__":
    main()
