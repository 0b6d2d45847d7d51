"""Chance accuracy per family: the analytic uniform baseline against a simulated random guesser, and the
majority baseline against a direct count of BuiltinSource's answers."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from sif_jax.data.chance import builtin_examples, chance_by_family
from sif_jax.data.pipeline import BuiltinSource
from sif_jax.data.scenes import SceneConfig

CONFIG = SceneConfig(height=64, width=64)  # the geometry is scale-free; small images keep it fast


@pytest.fixture(scope="module")
def examples():
    return builtin_examples(300, seed=0, scene_config=CONFIG)


def _options_by_hand(scene, q):
    """The options re-derived from the question text and the scene, independently of data.chance."""
    if q.choices is not None:
        return list(q.choices)
    if q.answer in ("yes", "no"):
        return ["yes", "no"]
    if q.text.startswith("Which is"):  # "Which is closer to the camera, the A or the B?"
        a, b = q.text.split(", the ", 1)[1].rstrip("?").split(" or the ")
        return [a, b]
    if q.text.startswith("What colour"):
        return ["red", "green", "blue", "yellow", "purple", "orange", "cyan", "gray"]
    if q.text.startswith("What shape"):
        return ["sphere", "cube", "cone", "cylinder"]
    if q.text.startswith("How many"):
        return [str(k) for k in range(1, 7)]
    return [q.answer] + ["x"] * (len(scene.objects) - 1)  # nearest/farthest: one of the scene's objects


def test_uniform_chance_matches_a_simulated_random_guesser(examples):
    table = chance_by_family(examples)
    rng = np.random.default_rng(0)
    hits, n = collections.Counter(), collections.Counter()
    for scene, q in examples:
        options = _options_by_hand(scene, q)
        guesses = rng.integers(len(options), size=400)
        hits[q.family] += sum(options[g] == q.answer for g in guesses)
        n[q.family] += 400
    for family, row in table.items():
        empirical = hits[family] / n[family]
        stderr = np.sqrt(empirical * (1 - empirical) / n[family])
        assert abs(row["uniform"] - empirical) < 5 * stderr + 1e-3, (family, row["uniform"], empirical)


def test_majority_and_shares_match_builtin_source_counts(examples):
    table = chance_by_family(examples)
    src = BuiltinSource(seed=0, size=300, split="train", scene_config=CONFIG)
    answers = collections.defaultdict(collections.Counter)
    for i in range(len(src)):
        ex = src[i]
        answers[ex["family"]][ex["answer"]] += 1
    assert set(table) == set(answers) == {"relation", "attribute", "count", "nearest"}
    for family, counts in answers.items():
        total = sum(counts.values())
        assert table[family]["examples"] == total
        assert table[family]["share"] == pytest.approx(total / 300)
        assert table[family]["majority"] == pytest.approx(max(counts.values()) / total)
        assert counts[table[family]["majority_answer"]] == max(counts.values())


def test_count_answers_are_not_dominated_by_one(examples):
    """Count questions are drawn answer first: "1" is well under the ~63% of a uniform draw over questions."""
    counts = collections.Counter(q.answer for _, q in examples if q.family == "count")
    assert counts["1"] / sum(counts.values()) < 0.55
    assert len(counts) >= 3


def test_bad_num_is_an_error():
    with pytest.raises(ValueError, match="num=0"):
        builtin_examples(0)
