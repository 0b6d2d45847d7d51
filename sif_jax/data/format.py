"""The SIFThinker output grammar: a checker that never raises, and a writer for the numbers.

Grammar (METHODS §1)::

    <think> ( <area> JSON </area> <text> TEXT </text> )+ </think> <answer> ANSWER </answer>

* whitespace is allowed around tags, nothing else is;
* JSON is a non-empty list of objects with exactly the keys "bbox_2d" (4 numbers
  x1, y1, x2, y2 in [0, 1] with x2 > x1 and y2 > y1) and "depth" (a number in [0, 1]), each
  key once: an object repeating a key (`{"bbox_2d": [...], "depth": 0.2, "depth": 0.4}`) is
  rejected rather than read with the last value winning;
* every number is written with at most 3 decimals and no exponent (NaN/Infinity are not JSON);
* TEXT and ANSWER are non-empty after stripping and contain none of the grammar's tags.

The RL format reward imports `check_format`; it returns `FormatResult(ok, reason, areas,
answer)` and never raises, whatever the input.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence

Box = tuple[float, float, float, float]
TAGS: tuple[str, ...] = (
    "<think>", "</think>", "<area>", "</area>", "<text>", "</text>", "<answer>", "</answer>",
)
MAX_DECIMALS = 3


@dataclasses.dataclass(frozen=True)
class FormatResult:
    """ok: the grammar holds. reason: "ok" or what failed first. areas: per <area>, its
    (box, depth) pairs (empty when not ok). answer: the stripped answer (None when not ok)."""

    ok: bool
    reason: str
    areas: list[list[tuple[Box, float]]]
    answer: str | None


class AreaJSONError(Exception):
    """A grammar violation; its message is the reason."""


def _fail(reason: str) -> FormatResult:
    return FormatResult(False, reason, [], None)


def _parse_float(s: str) -> float:
    if "e" in s or "E" in s:
        raise AreaJSONError(f"number {s!r} uses an exponent")
    decimals = len(s.split(".", 1)[1]) if "." in s else 0
    if decimals > MAX_DECIMALS:
        raise AreaJSONError(f"number {s!r} has {decimals} decimals (at most {MAX_DECIMALS})")
    return float(s)


def _parse_int(s: str) -> int:
    if len(s) > 20:  # far outside [0, 1] anyway; avoids int() on megabyte digit strings
        raise AreaJSONError(f"number {s[:20]!r}... is out of range")
    return int(s)


def _parse_constant(s: str) -> float:
    raise AreaJSONError(f"{s} is not a valid number")


def unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """`object_pairs_hook` for json.loads: a key given twice in one object is a violation."""
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise AreaJSONError(f"duplicate key {key!r} in a JSON object")
        out[key] = value
    return out


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _parse_area(raw: str, k: int) -> list[tuple[Box, float]]:
    try:
        value = json.loads(raw, parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant,
                           object_pairs_hook=unique_keys)
    except AreaJSONError as e:
        raise AreaJSONError(f"area {k}: {e}") from None
    except (ValueError, RecursionError) as e:
        raise AreaJSONError(f"area {k}: invalid JSON ({type(e).__name__})") from None
    if not isinstance(value, list) or not value:
        raise AreaJSONError(f"area {k}: JSON must be a non-empty list")
    out = []
    for j, item in enumerate(value):
        where = f"area {k} item {j}"
        if not isinstance(item, dict) or set(item) != {"bbox_2d", "depth"}:
            raise AreaJSONError(f"{where}: must be an object with exactly 'bbox_2d' and 'depth'")
        box, depth = item["bbox_2d"], item["depth"]
        if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise AreaJSONError(f"{where}: bbox_2d must be 4 numbers")
        if not all(0.0 <= v <= 1.0 for v in box):
            raise AreaJSONError(f"{where}: bbox_2d {box} has a coordinate outside [0, 1]")
        x1, y1, x2, y2 = (float(v) for v in box)
        if not x2 > x1:
            raise AreaJSONError(f"{where}: bbox_2d {box} has x2 <= x1")
        if not y2 > y1:
            raise AreaJSONError(f"{where}: bbox_2d {box} has y2 <= y1")
        if not _is_number(depth) or not 0.0 <= depth <= 1.0:
            raise AreaJSONError(f"{where}: depth {depth!r} must be a number in [0, 1]")
        out.append(((x1, y1, x2, y2), float(depth)))
    return out


def _no_tags(s: str, where: str) -> None:
    for tag in TAGS:
        if tag in s:
            raise AreaJSONError(f"{where} contains the tag {tag}")


def _expect(s: str, pos: int, tag: str, where: str) -> int:
    while pos < len(s) and s[pos].isspace():
        pos += 1
    if not s.startswith(tag, pos):
        raise AreaJSONError(f"expected {tag} {where}, found {s[pos:pos + 12]!r}")
    return pos + len(tag)


def _until(s: str, pos: int, tag: str) -> tuple[str, int]:
    end = s.find(tag, pos)
    if end < 0:
        raise AreaJSONError(f"missing {tag}")
    return s[pos:end], end + len(tag)


def _check(text: str) -> FormatResult:
    if not isinstance(text, str):
        raise AreaJSONError(f"expected a string, got {type(text).__name__}")
    pos = _expect(text, 0, "<think>", "at the start")
    areas: list[list[tuple[Box, float]]] = []
    while True:
        probe = pos
        while probe < len(text) and text[probe].isspace():
            probe += 1
        if text.startswith("</think>", probe):
            pos = probe + len("</think>")
            break
        pos = _expect(text, pos, "<area>", f"after pair {len(areas)} (or </think>)")
        raw, pos = _until(text, pos, "</area>")
        _no_tags(raw, f"area {len(areas)}")
        areas.append(_parse_area(raw, len(areas)))
        pos = _expect(text, pos, "<text>", f"after area {len(areas) - 1}")
        body, pos = _until(text, pos, "</text>")
        _no_tags(body, f"text {len(areas) - 1}")
        if not body.strip():
            raise AreaJSONError(f"text {len(areas) - 1} is empty")
    if not areas:
        raise AreaJSONError("no (<area>, <text>) pair inside <think>")
    pos = _expect(text, pos, "<answer>", "after </think>")
    answer, pos = _until(text, pos, "</answer>")
    _no_tags(answer, "answer")
    if not answer.strip():
        raise AreaJSONError("answer is empty")
    if text[pos:].strip():
        raise AreaJSONError(f"trailing text after </answer>: {text[pos:pos + 12]!r}")
    return FormatResult(True, "ok", areas, answer.strip())


def check_format(text: object) -> FormatResult:
    """Checks `text` against the grammar; never raises (any failure is `ok=False` + reason)."""
    try:
        return _check(text)  # type: ignore[arg-type]
    except AreaJSONError as e:
        return _fail(str(e))
    except Exception as e:  # a reward must not crash a training step
        return _fail(f"unparseable input ({type(e).__name__})")


def fmt_number(v: float) -> str:
    """A number in [0, 1] with at most 3 decimals and no exponent ("0.25", "1", "0")."""
    s = f"{float(v):.3f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def area_json(boxes: Sequence[Sequence[float]], depths: Sequence[float]) -> str:
    """The <area> payload: `[{"bbox_2d":[x1,y1,x2,y2],"depth":d}, ...]`, numbers by `fmt_number`."""
    items = []
    for box, d in zip(boxes, depths, strict=True):
        coords = ",".join(fmt_number(v) for v in box)
        items.append(f'{{"bbox_2d":[{coords}],"depth":{fmt_number(d)}}}')
    return "[" + ", ".join(items) + "]"
