"""Deterministic answer matcher for the accuracy reward (host-side text work, never raises on
model output).

`match_answer(prediction, answer, choices) -> float in [0, 1]`, in this order:

1. Multiple choice (`choices` non-empty): options are lettered A, B, C, ... (a leading "A.",
   "(A)", "A)" or "A:" in an option is stripped). The gold option is the answer's letter or the
   option whose text equals the answer. A prediction names an option by its letter ("B", "(B)",
   "B.", "B) text", "the answer is B") or by the option's text. Score 1 if it names the gold
   option, else 0. If the gold cannot be located among the options we fall through to 2/3.
2. Numeric (the gold answer holds exactly one number, e.g. "3", "0.25", "2 cubes", "three"):
   the prediction must hold exactly one distinct number, equal within
   |p - g| <= atol + rtol * |g|.
3. Otherwise exact equality after normalisation: lower case, punctuation -> space, articles
   (a, an, the) dropped, whitespace collapsed.
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
_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_WORDS) + r")\b")
# Letter forms: "B", "(B)", "B.", "B)", "B:", optionally followed by the option text.
_LETTER_ALONE = re.compile(r"^\(?\s*([A-Za-z])\s*\)?\s*[.:)]?$")
_LETTER_PREFIX = re.compile(r"^(?:\(([A-Z])\)|([A-Z])\s*[.:)])\s*(.*)$", re.DOTALL)
_ANSWER_IS = re.compile(
    r"^(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)\s*(?:is)?\s*:?\s*\(?([A-Za-z])\)?\s*\.?$", re.IGNORECASE
)


def normalize_text(s: str) -> str:
    """Lower case, punctuation to spaces, articles removed, whitespace collapsed."""
    s = s.lower().translate(_PUNCT_TABLE)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def extract_numbers(s: str) -> list[float]:
    """Numbers written with digits ("1,000", "-2.5", ".5"); number words zero..twenty only when
    there are no digit numbers (so "the one on the left, 3" reads as 3)."""
    found = [float(m.group(0).replace(",", "")) for m in _NUMBER.finditer(s)]
    if found:
        return found
    return [float(_WORDS.index(m.group(1))) for m in _NUMBER_WORD.finditer(s.lower())]


def _letter_index(s: str, n_options: int) -> int | None:
    """The option index a prediction names by letter, or None."""
    s = s.strip()
    m = _LETTER_ALONE.match(s) or _ANSWER_IS.match(s)
    letter = m.group(1) if m else None
    if letter is None:
        m2 = _LETTER_PREFIX.match(s)
        letter = (m2.group(1) or m2.group(2)) if m2 else None
    if letter is None:
        return None
    idx = ord(letter.upper()) - ord("A")
    return idx if 0 <= idx < n_options else None


def _option_text(choice: str) -> str:
    m = _LETTER_PREFIX.match(choice.strip())
    return m.group(3) if m and m.group(3).strip() else choice


def _choice_index(s: str, choices: Sequence[str]) -> int | None:
    idx = _letter_index(s, len(choices))
    if idx is not None:
        return idx
    norm = normalize_text(s)
    if not norm:
        return None
    for i, c in enumerate(choices):
        if normalize_text(_option_text(c)) == norm:
            return i
    return None


def _numbers_equal(p: float, g: float, rtol: float, atol: float) -> bool:
    return abs(p - g) <= atol + rtol * abs(g)


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
        gold = _choice_index(answer, choices)
        if gold is not None:
            return float(_choice_index(prediction, choices) == gold)
    gold_numbers = extract_numbers(answer)
    if len(gold_numbers) == 1:
        pred_numbers = set(extract_numbers(prediction))
        if pred_numbers:
            return float(len(pred_numbers) == 1 and _numbers_equal(pred_numbers.pop(), gold_numbers[0], rtol, atol))
    norm = normalize_text(prediction)
    return float(bool(norm) and norm == normalize_text(answer))
