"""Deterministic answer matcher for the accuracy reward and for evaluation (host-side text work,
never raises on model output). `rewards.accuracy_scores` and `sif_jax.evaluate` both score with
`match_answer` on the answer `rewards.extract_answer` returns.

`match_answer(prediction, answer, choices) -> float in {0, 1}`. A lead-in ("the answer is",
"answer:", "the correct option is", "option", any case) is dropped from the prediction first. Then:

1. Multiple choice (`choices` non-empty). The gold option is located as the prediction is (below);
   score 1 if the prediction names the gold option, else 0. If the gold cannot be located among
   the options we fall through to 2/3. A prediction names an option
   a. by letter, only when the options are *lettered choices*: every option carries a letter
      prefix in order ("A. x", "(A) x", "A) x", "A: x"), or the gold answer is itself a letter
      ("B", "(B)", "B."). Letter forms: the whole prediction is one letter, bracketed or followed
      by ".", ")" or ":" ("B", "b", "(b)", "B."; either case), "the answer is B" (either case),
      or an upper-case prefix followed by the option text ("B) blue sphere"; upper case only, so
      "A red cube" is text, not option A). Otherwise (yes/no, captions, colour names, numbers)
      a lone letter names no option: "a" is not option A of a yes/no question;
   b. by the option's text, equal after normalisation (3 below);
   c. by number, when every option holds exactly one number and no two are equal (e.g. "1",
      "2", "3" or "3 cubes"): a prediction holding exactly one distinct number (digits or a
      number word, optionally with a unit noun: "3", "3 cubes", "three", "There are three.")
      names the option with that number within |p - g| <= atol + rtol * |g|.
2. Numeric (the gold answer holds exactly one number, e.g. "3", "0.25", "2 cubes", "three"):
   the prediction must hold exactly one distinct number, equal within |p - g| <= atol + rtol * |g|
   ("2 or 3" is 0: hedging is not rewarded).
3. Otherwise exact equality after normalisation: lower case, punctuation -> space, articles
   (a, an, the) dropped, whitespace collapsed.

Numbers: digits ("1,000", "-2.5", ".5"), or, only when a text has no digits, number words zero
to ninety-nine ("three", "twelve", "twenty-one", "forty two"; any case).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence

# A judge scores (prediction, gold answer, choices or None) in [0, 1] (e.g. an LLM judge).
Judge = Callable[[str, str, "Sequence[str] | None"], float]

_PUNCT_TABLE = str.maketrans({c: " " for c in string.punctuation})
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])|(?<![\w.])[-+]?\.\d+(?![\w])")
_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
_NUMBER_WORD = re.compile(
    r"\b(?:(" + "|".join(_TENS) + r")(?:[\s-]+(" + "|".join(_UNITS[1:10]) + r"))?|(" + "|".join(_UNITS) + r"))\b"
)
# Letter forms: "B", "(B)", "B.", "B)", "B:", optionally followed by the option text.
_LETTER_ALONE = re.compile(r"^\(?\s*([A-Za-z])\s*\)?\s*[.:)]?$")
_LETTER_PREFIX = re.compile(r"^(?:\(([A-Z])\)|([A-Z])\s*[.:)])\s*(.*)$", re.DOTALL)
_LEAD_IN = re.compile(
    r"^\s*(?:the\s+)?(?:correct\s+|final\s+|right\s+)?(?:answer|option|choice)\b\s*(?:is\b\s*:?|:)?\s*",
    re.IGNORECASE,
)


def normalize_text(s: str) -> str:
    """Lower case, punctuation to spaces, articles removed, whitespace collapsed."""
    s = s.lower().translate(_PUNCT_TABLE)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def extract_numbers(s: str) -> list[float]:
    """Numbers written with digits ("1,000", "-2.5", ".5"); number words zero..ninety-nine
    ("three", "twenty-one", "forty two", any case) only when there are no digit numbers (so
    "the one on the left, 3" reads as 3)."""
    found = [float(m.group(0).replace(",", "")) for m in _NUMBER.finditer(s)]
    if found:
        return found
    out = []
    for m in _NUMBER_WORD.finditer(s.lower()):
        tens, unit, single = m.groups()
        out.append(float(_UNITS.index(single)) if single else float(_TENS[tens] + (_UNITS.index(unit) if unit else 0)))
    return out


def _strip_lead_in(s: str) -> str:
    """ "The answer is: B." -> "B." (unchanged when nothing is left after the lead-in)."""
    rest = _LEAD_IN.sub("", s, count=1).strip()
    return rest if rest else s.strip()


def _bare_letter(s: str, n_options: int) -> int | None:
    """The option index of a prediction that is one letter ("b", "(B)", "B."), any case."""
    m = _LETTER_ALONE.match(s.strip())
    if not m:
        return None
    idx = ord(m.group(1).upper()) - ord("A")
    return idx if 0 <= idx < n_options else None


def _letter_index(s: str, n_options: int) -> int | None:
    """The option index a prediction names by letter (lettered choices only), or None."""
    idx = _bare_letter(s, n_options)
    if idx is not None:
        return idx
    m = _LETTER_PREFIX.match(s.strip())
    if not m:
        return None
    idx = ord(m.group(1) or m.group(2)) - ord("A")
    return idx if 0 <= idx < n_options else None


def lettered_choices(answer: str, choices: Sequence[str]) -> bool:
    """True when options may be named by letter: every option has a letter prefix in order
    ("A. x", "(B) y", ...), or the gold answer is itself a letter form ("B", "(B)", "B.")."""
    prefixes = [_LETTER_PREFIX.match(c.strip()) if isinstance(c, str) else None for c in choices]
    if all(m is not None and (m.group(1) or m.group(2)) == chr(ord("A") + i) and m.group(3).strip()
           for i, m in enumerate(prefixes)):
        return True
    return isinstance(answer, str) and _bare_letter(_strip_lead_in(answer), len(choices)) is not None


def _option_text(choice: str) -> str:
    m = _LETTER_PREFIX.match(choice.strip())
    return m.group(3) if m and m.group(3).strip() else choice


def _numbers_equal(p: float, g: float, rtol: float, atol: float) -> bool:
    return abs(p - g) <= atol + rtol * abs(g)


def _numeric_options(choices: Sequence[str], rtol: float, atol: float) -> list[float] | None:
    """Each option's number when every option holds exactly one and no two are equal, else None."""
    values = []
    for c in choices:
        found = set(extract_numbers(_option_text(c)))
        if len(found) != 1:
            return None
        values.append(found.pop())
    for i, v in enumerate(values):
        if any(_numbers_equal(v, w, rtol, atol) or _numbers_equal(w, v, rtol, atol) for w in values[i + 1:]):
            return None
    return values


def _choice_index(s: str, choices: Sequence[str], lettered: bool, rtol: float, atol: float) -> int | None:
    s = _strip_lead_in(s)
    if lettered:
        idx = _letter_index(s, len(choices))
        if idx is not None:
            return idx
    norm = normalize_text(s)
    if not norm:
        return None
    for i, c in enumerate(choices):
        if normalize_text(_option_text(c)) == norm:
            return i
    values = _numeric_options(choices, rtol, atol)
    if values is not None:
        found = set(extract_numbers(s))
        if len(found) == 1:
            p = found.pop()
            hits = [i for i, v in enumerate(values) if _numbers_equal(p, v, rtol, atol)]
            if len(hits) == 1:
                return hits[0]
    return None


def match_answer(
    prediction: str,
    answer: str,
    choices: Sequence[str] | None = None,
    *,
    rtol: float = 1e-3,
    atol: float = 1e-6,
) -> float:
    """Deterministic score in {0, 1} of `prediction` against the gold `answer` (module doc)."""
    if not isinstance(prediction, str) or not prediction.strip():
        return 0.0
    if choices:
        lettered = lettered_choices(answer, choices)
        gold = _choice_index(answer, choices, lettered, rtol, atol)
        if gold is not None:
            return float(_choice_index(prediction, choices, lettered, rtol, atol) == gold)
    prediction = _strip_lead_in(prediction)
    gold_numbers = extract_numbers(answer)
    if len(gold_numbers) == 1:
        pred_numbers = set(extract_numbers(prediction))
        if pred_numbers:
            return float(len(pred_numbers) == 1 and _numbers_equal(pred_numbers.pop(), gold_numbers[0], rtol, atol))
    norm = normalize_text(prediction)
    return float(bool(norm) and norm == normalize_text(answer))
