"""The default command's closing lines: held-out accuracy per question family, before and after GRPO."""

from sif_jax.evaluation import EvalResult
from sif_jax.train import _print_family_table


def _summary(rows):
    return EvalResult([{"family": f, "accuracy": a, "format": 1.0} for f, a in rows]).summary()


def test_family_table_shows_before_and_after_accuracy(capsys):
    before = _summary([("count", 0.0), ("count", 1.0), ("relation", 0.0), ("attribute", 0.0)])
    after = _summary([("count", 1.0), ("count", 1.0), ("relation", 1.0), ("attribute", 0.0)])
    _print_family_table(before, after)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "held-out accuracy by question family, before -> after GRPO:"
    assert [line.split() for line in lines[1:]] == [
        ["attribute", "0.000", "->", "0.000", "(1", "examples)"],
        ["count", "0.500", "->", "1.000", "(2", "examples)"],
        ["relation", "0.000", "->", "1.000", "(1", "examples)"],
    ]


def test_family_table_is_silent_without_families(capsys):
    _print_family_table({"examples": 0}, {"examples": 0})
    assert capsys.readouterr().out == ""
