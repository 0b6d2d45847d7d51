"""The SIF record: one (image, question, target boxes, answer, trace) example, and its readers.

Field names follow SIF-50K: `image`, `depth_image`, `problem`,
`normalized_solution_round.bbox_3d` (despite the name, normalised 2-D boxes [x1, y1, x2, y2]),
`response` (the ground-truth answer), `messages` (user/assistant turns; the assistant turn holds
the interleaved trace) and `images`. Readers turn local SIF-50K JSON, GQA, VSR and WhatsUp files
into `SIFRecord`s; `record_errors` / `validate_records` check a list of them and name the record
index, field and value of every problem, e.g.::

    record 17: field 'normalized_solution_round.bbox_3d'[0] = [0.5, 0.1, 0.4, 0.3]: x2 <= x1

`usable_records` keeps the good records and counts the bad ones (`SkippedRecords`: count, first
ids, first problems) instead of failing on the first bad one; evaluation and the local dataset
build use it (each with a strict option that raises instead).

Readers never raise on bad *values* (they pass them through so validation can name them); they
raise on unreadable files (bad JSON) naming the file and line.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

BOX_FIELD = "normalized_solution_round.bbox_3d"
IMAGE_TOKEN = "<image>"
# meta key under which a reader lists (source field, value, why) problems it found in a row, so
# validation skips/rejects the record naming the field of the *source* file (e.g. VSR `caption`).
SOURCE_PROBLEMS = "source_problems"


@dataclasses.dataclass
class SIFRecord:
    """One example. Paths are as given or resolved against the reader's image root.

    boxes: the GT boxes (`normalized_solution_round.bbox_3d`), normalised [x1, y1, x2, y2].
    choices: options of a multiple-choice question (None otherwise).
    focus: SAYO's focus area as a bool [rows, cols] mask of 28 px token cells of the stored image
      (None for other sources); the region-attention reward's target (see `sayo_focus_mask`).
    source: which reader made it ("sif", "gqa", "vsr", "whatsup", "sayo", "scenes").
    meta: anything else a reader keeps (GQA question types, VSR relation, ...).
    """

    image: Any  # a path, or encoded image bytes (SAYO parquet)
    problem: Any
    response: Any
    boxes: Any = dataclasses.field(default_factory=list)
    depth_image: Any = None
    messages: Any = dataclasses.field(default_factory=list)
    images: Any = dataclasses.field(default_factory=list)
    id: str = ""
    source: str = "sif"
    choices: Any = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    focus: Any = None

    def to_json(self) -> dict[str, Any]:
        """The SIF-50K JSON object (plus `id`, `source`, `choices`, `meta`)."""
        return {
            "id": self.id,
            "image": self.image,
            "depth_image": self.depth_image,
            "problem": self.problem,
            "normalized_solution_round": {"bbox_3d": self.boxes},
            "response": self.response,
            "messages": self.messages,
            "images": self.images,
            "source": self.source,
            "choices": self.choices,
            "meta": self.meta,
        }


def default_messages(problem: str, assistant: str) -> list[dict[str, str]]:
    """The two-turn conversation SIF-50K stores: `<image>` + problem, then the trace/answer."""
    return [
        {"role": "user", "content": f"{IMAGE_TOKEN}{problem}"},
        {"role": "assistant", "content": assistant},
    ]


# ---------------------------------------------------------------------------- validation


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _box_problem(box: Any) -> str | None:
    if not isinstance(box, list | tuple) or len(box) != 4:
        return "expected 4 numbers [x1, y1, x2, y2]"
    if not all(_is_num(v) for v in box):
        return "coordinates must be finite numbers"
    if not all(0.0 <= v <= 1.0 for v in box):
        return "coordinate outside [0, 1]"
    if not box[2] > box[0]:
        return "x2 <= x1"
    if not box[3] > box[1]:
        return "y2 <= y1"
    return None


def _nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def record_errors(
    records: Sequence[SIFRecord], check_files: bool = True, require_boxes: bool = False
) -> list[str]:
    """Every problem in `records`, as `record {i}: field '{name}'[{j}] = {value!r}: {why}`.

    check_files: also check that image / depth_image / images files exist.
    require_boxes: an empty box list is an error (training data for box rewards needs them).
    """
    problems = record_problems(records, check_files=check_files, require_boxes=require_boxes)
    return [e for i in sorted(problems) for e in problems[i]]


def record_problems(
    records: Sequence[SIFRecord], check_files: bool = True, require_boxes: bool = False
) -> dict[int, list[str]]:
    """`record_errors` grouped by record index (only records with a problem appear)."""
    errors: dict[int, list[str]] = {}

    def err(i: int, name: str, value: Any, why: str, index: int | None = None) -> None:
        sub = "" if index is None else f"[{index}]"
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        errors.setdefault(i, []).append(f"record {i}: field {name!r}{sub} = {shown}: {why}")

    for i, r in enumerate(records):
        for name, value, why in (r.meta.get(SOURCE_PROBLEMS) or []) if isinstance(r.meta, dict) else []:
            err(i, name, value, why)
        if isinstance(r.image, bytes | bytearray):
            if not r.image:
                err(i, "image", r.image, "empty image bytes")
        elif not _nonempty_str(r.image):
            err(i, "image", r.image, "missing image path")
        elif check_files and not os.path.isfile(r.image):
            err(i, "image", r.image, "image file not found")
        if r.depth_image is not None:
            if not _nonempty_str(r.depth_image):
                err(i, "depth_image", r.depth_image, "must be a path or null")
            elif check_files and not os.path.isfile(r.depth_image):
                err(i, "depth_image", r.depth_image, "depth image file not found")
        if not _nonempty_str(r.problem):
            err(i, "problem", r.problem, "empty problem")
        if not _nonempty_str(r.response):
            err(i, "response", r.response, "empty answer")
        if not isinstance(r.boxes, list | tuple):
            err(i, BOX_FIELD, r.boxes, "expected a list of boxes")
        else:
            if require_boxes and not r.boxes:
                err(i, BOX_FIELD, r.boxes, "no target box")
            for j, box in enumerate(r.boxes):
                why = _box_problem(box)
                if why:
                    err(i, BOX_FIELD, box, why, j)
        if not isinstance(r.messages, list | tuple):
            err(i, "messages", r.messages, "expected a list of {role, content}")
        else:
            for j, m in enumerate(r.messages):
                if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                    err(i, "messages", m, "expected {'role': system|user|assistant, ...}", j)
                elif not _nonempty_str(m.get("content")):
                    err(i, "messages", m, "empty content", j)
        if not isinstance(r.images, list | tuple):
            err(i, "images", r.images, "expected a list of paths")
        else:
            for j, p in enumerate(r.images):
                if not _nonempty_str(p):
                    err(i, "images", p, "missing path", j)
                elif check_files and not os.path.isfile(p):
                    err(i, "images", p, "image file not found", j)
        if r.choices is not None:
            if not isinstance(r.choices, list | tuple) or not all(
                _nonempty_str(c) for c in r.choices
            ):
                err(i, "choices", r.choices, "expected a list of non-empty strings or null")
            elif _nonempty_str(r.response) and r.response not in r.choices:
                err(i, "response", r.response, "answer is not one of the choices")
    return errors


def validate_records(
    records: Sequence[SIFRecord], check_files: bool = True, require_boxes: bool = False
) -> None:
    """Raises one ValueError listing every problem `record_errors` finds."""
    errors = record_errors(records, check_files=check_files, require_boxes=require_boxes)
    if errors:
        raise ValueError(f"{len(errors)} problem(s) in {len(records)} records:\n" + "\n".join(errors))


SHOWN_IDS = 10  # how many skipped record ids a report lists


@dataclasses.dataclass(frozen=True)
class SkippedRecords:
    """The records `usable_records` left out.

    count: how many. ids: the first `SHOWN_IDS` of their ids (record index when a record has no
    id). errors: the first problem of each of those records (`record_errors` wording).
    """

    count: int = 0
    ids: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def summary(self, what: str = "records") -> str:
        """'skipped 2 invalid records (ids: q7, q9): record 3: field ...; ...' ('' when none)."""
        if not self.count:
            return ""
        more = f", ... {self.count - len(self.ids)} more" if self.count > len(self.ids) else ""
        return (f"skipped {self.count} invalid {what} (ids: {', '.join(self.ids)}{more}): "
                + "; ".join(self.errors[:3]))

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "ids": list(self.ids), "errors": list(self.errors)}


def usable_records(
    records: Sequence[SIFRecord], *, strict: bool = False, check_files: bool = True, require_boxes: bool = False
) -> tuple[list[SIFRecord], SkippedRecords]:
    """The records without problems, and what was skipped.

    One bad record (e.g. a GQA object whose box clips to zero area, a missing image file) does not
    stop an evaluation or a dataset build: it is left out, counted and named in `SkippedRecords`.
    strict: raise instead (the ValueError of `validate_records`, listing every problem).
    """
    if strict:
        validate_records(records, check_files=check_files, require_boxes=require_boxes)
        return list(records), SkippedRecords()
    problems = record_problems(records, check_files=check_files, require_boxes=require_boxes)
    if not problems:
        return list(records), SkippedRecords()
    bad = sorted(problems)
    shown = bad[:SHOWN_IDS]
    ids = tuple(str(records[i].id or i) for i in shown)
    return ([r for i, r in enumerate(records) if i not in problems],
            SkippedRecords(len(bad), ids, tuple(problems[i][0] for i in shown)))


# ---------------------------------------------------------------------------- readers


def _resolve(path: Any, root: str | os.PathLike | None) -> Any:
    if not isinstance(path, str) or not path or root is None or os.path.isabs(path):
        return path
    return os.path.join(os.fspath(root), path)


def _resolve_sif(path: Any, root: str | os.PathLike) -> Any:
    """A SIF-50K path: `root/path` when it exists; else, for paths that climb out of the root
    (SIFThinker's records say `../data/...`, relative to its GRPO-SIF folder), the first existing of
    `root/<path without its leading ../ and ./>` and `<root's parent>/path`; else `root/path`
    (validation then reports the missing file)."""
    first = _resolve(path, root)
    if not isinstance(path, str) or not path or os.path.isabs(path) or os.path.exists(first):
        return first
    parts = path.replace("\\", "/").split("/")
    while parts and parts[0] in ("..", "."):
        parts.pop(0)
    for candidate in (os.path.join(os.fspath(root), *parts) if parts else None,
                      os.path.join(os.path.dirname(os.path.abspath(root)), path)):
        if candidate and os.path.exists(candidate):
            return candidate
    return first


def _load_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: invalid JSON at line {e.lineno}: {e.msg}") from None


def _load_jsonl(path: str | os.PathLike) -> list[Any]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{os.fspath(path)}: invalid JSON on line {n}: {e.msg}") from None
    return out


def iter_json_object(path: str | os.PathLike, *, chunk_chars: int = 1 << 20, desc: str | None = None):
    """Yields (key, value) of a top-level JSON object one entry at a time, reading `chunk_chars` at a
    time, so a multi-GB GQA file never sits in memory whole; a tqdm bar shows the bytes read
    (`desc`, when given). Raises ValueError naming the file for anything but `{"key": value, ...}`."""
    from tqdm import tqdm

    path = os.fspath(path)
    decoder = json.JSONDecoder()
    total = os.path.getsize(path)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=desc is None, leave=False)
    with open(path, encoding="utf-8") as f, bar:
        buf, pos, done = "", 0, False

        def fill() -> bool:
            nonlocal buf, pos, done
            more = f.read(chunk_chars)
            bar.update(len(more.encode("utf-8")) if more else 0)
            buf, pos = buf[pos:] + more, 0
            done = not more
            return bool(more)

        def skip_ws() -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not fill():
                    return

        def expect(chars: str) -> str:
            skip_ws()
            if pos >= len(buf) or buf[pos] not in chars:
                got = buf[pos:pos + 20] if pos < len(buf) else "end of file"
                raise ValueError(f"{path}: expected one of {chars!r} of a JSON object keyed by id, got {got!r}")
            return buf[pos]

        def value() -> Any:
            nonlocal pos
            while True:
                skip_ws()
                try:
                    v, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as e:
                    if done or not fill():
                        raise ValueError(f"{path}: invalid JSON: {e.msg}") from None
                    continue
                if end == len(buf) and not done and fill():  # a number may continue in the next chunk
                    continue
                pos = end
                return v

        expect("{")
        pos += 1
        if expect('"}') == "}":
            return
        while True:
            key = value()
            expect(":")
            pos += 1
            yield key, value()
            if expect(",}") == "}":
                return
            pos += 1


def read_sif_json(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None
) -> list[SIFRecord]:
    """Reads SIF-50K style JSON (a list of objects, as SIFThinker's `produce.py` writes it) or JSONL.

    Relative paths are taken from `image_root` (default: the file's directory); SIFThinker's
    `../data/...` paths are found as `_resolve_sif` says. Extra fields (`dataset`,
    `normalized_solution_round.illegal_content`) are kept in `meta` / ignored. Boxes are read as
    normalised [0, 1] (`normalized_solution_round`); a pixel box fails validation (coordinate
    outside [0, 1]) instead of being rescaled.
    """
    path = os.fspath(path)
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    rows = _load_jsonl(path) if path.endswith(".jsonl") else _load_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            row = {}
        sol = row.get("normalized_solution_round")
        boxes = sol.get("bbox_3d", []) if isinstance(sol, dict) else sol
        images = row.get("images", [])
        if isinstance(images, list):
            images = [_resolve_sif(p, root) for p in images]
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        if row.get("dataset") is not None:
            meta = {**meta, "dataset": row.get("dataset")}
        out.append(SIFRecord(
            image=_resolve_sif(row.get("image"), root),
            problem=row.get("problem"),
            response=row.get("response"),
            boxes=boxes if boxes is not None else [],
            depth_image=_resolve_sif(row.get("depth_image"), root),
            messages=row.get("messages", []),
            images=images,
            id=str(row.get("id", i)),
            source=str(row.get("source", "sif")),
            choices=row.get("choices"),
            meta=meta,
        ))
    return out


def write_sif_json(records: Iterable[SIFRecord], path: str | os.PathLike) -> None:
    """Writes records as a SIF-50K JSON list (paths as stored in the records)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump([r.to_json() for r in records], f, indent=1)


def read_gqa(
    questions_json: str | os.PathLike,
    scene_graphs_json: str | os.PathLike,
    image_root: str | os.PathLike,
    image_ext: str = ".jpg",
    progress: bool = False,
) -> list[SIFRecord]:
    """GQA: `{qid: {imageId, question, answer, annotations: {question|answer|fullAnswer:
    {span: objectId}}, ...}}` + scene graphs `{imageId: {width, height, objects: {objectId:
    {name, x, y, w, h, ...}}}}`. Target boxes are the annotated objects (question, answer and
    full answer, first mention first), normalised by the image size and clipped to [0, 1].

    Both files are streamed entry by entry (`iter_json_object`; `progress` shows tqdm bars), and of
    the scene graphs only the images the questions name are kept. A target object the scene graph
    lacks (or has no size for) gives no box; its id goes to `meta["missing_objects"]` and
    `gqa_missing_targets` counts them — never silently dropped.
    """
    questions: dict[str, Any] = {}
    for qid, q in iter_json_object(questions_json, desc="GQA questions" if progress else None):
        if not isinstance(q, dict):
            raise ValueError(f"{os.fspath(questions_json)}: question {qid!r} is {type(q).__name__}, expected an object")
        questions[qid] = q
    wanted = {str(q.get("imageId", "")) for q in questions.values()}
    graphs: dict[str, Any] = {}
    for image_id, graph in iter_json_object(scene_graphs_json, desc="GQA scene graphs" if progress else None):
        if image_id in wanted:
            graphs[image_id] = graph if isinstance(graph, dict) else {}
    out = []
    for qid, q in questions.items():
        image_id = str(q.get("imageId", ""))
        graph = graphs.get(image_id) or {}
        objects = graph.get("objects") or {}
        width, height = graph.get("width"), graph.get("height")
        ids: list[str] = []
        for part in ("question", "answer", "fullAnswer"):
            for value in (q.get("annotations") or {}).get(part, {}).values():
                for oid in str(value).split(","):
                    if oid and oid not in ids:
                        ids.append(oid)
        boxes = []
        missing = []
        for oid in ids:
            obj = objects.get(oid)
            try:
                x, y, w, h = (float(obj[k]) for k in ("x", "y", "w", "h"))  # type: ignore[index]
                width, height = float(width), float(height)  # type: ignore[arg-type]
            except (TypeError, KeyError, ValueError):
                missing.append(oid)  # no object, no size, or a malformed entry: no box
                continue
            if width <= 0 or height <= 0:
                missing.append(oid)
                continue
            box = [x / width, y / height, (x + w) / width, (y + h) / height]
            boxes.append([min(max(v, 0.0), 1.0) for v in box])
        problem, answer = q.get("question"), q.get("answer")
        image = _resolve(f"{image_id}{image_ext}", image_root)
        meta = {"types": q.get("types", {}), "full_answer": q.get("fullAnswer")}
        if missing:
            meta["missing_objects"] = missing
            if image_id not in graphs:
                meta["missing_scene_graph"] = image_id
        out.append(SIFRecord(
            image=image, problem=problem, response=answer, boxes=boxes,
            messages=default_messages(str(problem), str(answer)), images=[image],
            id=str(qid), source="gqa", meta=meta,
        ))
    return out


def gqa_missing_targets(records: Sequence[SIFRecord]) -> tuple[int, int, list[str]]:
    """(questions with a target object missing from the scene graph, missing objects in all, the
    first `SHOWN_IDS` of those question ids)."""
    hit = [r for r in records if isinstance(r.meta, dict) and r.meta.get("missing_objects")]
    return len(hit), sum(len(r.meta["missing_objects"]) for r in hit), [r.id for r in hit[:SHOWN_IDS]]


VSR_LABELS = {1: "yes", "1": "yes", "true": "yes", "True": "yes",  # True == 1, False == 0
              0: "no", "0": "no", "false": "no", "False": "no"}


def read_vsr(jsonl: str | os.PathLike, image_root: str | os.PathLike) -> list[SIFRecord]:
    """VSR: JSONL lines `{image, caption, label (1 true / 0 false), relation, ...}`; each becomes
    a yes/no question about the caption. VSR has no boxes. A line without a `caption` string or
    with another `label` is flagged on that source field (skipped and counted, or an error with
    strict validation) — never turned into a question about "None"."""
    out = []
    for i, row in enumerate(_load_jsonl(jsonl)):
        if not isinstance(row, dict):
            row = {}
        caption = row.get("caption")
        label = row.get("label")
        problems = []
        if not _nonempty_str(caption):
            problems.append(("caption", caption, "missing caption (the statement the question asks about)"))
        answer = VSR_LABELS.get(label, "") if isinstance(label, int | str | bool) else ""
        if not answer:
            problems.append(("label", label, "expected 1 (true) or 0 (false)"))
        problem = f'Is this statement about the image true: "{caption}"? Answer yes or no.' if _nonempty_str(
            caption) else ""
        image = _resolve(row.get("image"), image_root)
        meta: dict[str, Any] = {"relation": row.get("relation"), "caption": caption}
        if problems:
            meta[SOURCE_PROBLEMS] = problems
        out.append(SIFRecord(
            image=image, problem=problem, response=answer, boxes=[],
            messages=default_messages(problem, answer) if not problems else [], images=[image],
            id=str(row.get("id", i)), source="vsr", choices=["yes", "no"], meta=meta,
        ))
    return out


def _whatsup_image(image_id: Any, root: str | os.PathLike) -> str:
    """COCO-/VG-spatial image ids name files as the WhatsUp loaders do: `val2017/<id, 12 digits>.jpg`
    (COCO), `vg_images/<id>.jpg` (VG), or `<id>.jpg` directly under the image folder."""
    name = str(image_id)
    names = [f"{name}.jpg", f"{name.zfill(12)}.jpg", os.path.join("val2017", f"{name.zfill(12)}.jpg"),
             os.path.join("vg_images", f"{name}.jpg")]
    candidates = [os.path.join(os.fspath(root), n) for n in names]
    return next((c for c in candidates if os.path.exists(c)), candidates[0])


def read_whatsup(
    path: str | os.PathLike, image_root: str | os.PathLike, seed: int = 0
) -> list[SIFRecord]:
    """WhatsUp, either format of its files:

    * Controlled-A/B: a JSON list of `{image_path, caption_options}` whose first option is the true
      caption;
    * COCO-spatial / VG-spatial (`coco_qa_*.json`, `vg_qa_*.json`): a JSON list of
      `[image_id, true_caption, false_caption, ...]` (image file: `_whatsup_image`).

    Options are shuffled per record (seeded) so the answer's position is no cue. A row with fewer
    than two non-empty captions is flagged on `caption_options` (skipped and counted, or an error
    with strict validation); a row of another shape is flagged on `row`.
    """
    rows = _load_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{os.fspath(path)}: expected a JSON list of WhatsUp rows, got {type(rows).__name__}")
    out = []
    for i, row in enumerate(rows):
        problems = []
        if isinstance(row, dict):
            options = row.get("caption_options")
            image = _resolve(row.get("image_path"), image_root)
            field = "caption_options"
        elif isinstance(row, list | tuple) and row:
            options = list(row[1:])
            image = _whatsup_image(row[0], image_root)
            field = "caption_options"  # [image_id, true, false]: the captions after the id
        else:
            options, image, field = None, None, "row"
            problems.append(("row", row, "expected {image_path, caption_options} or [image_id, true, false]"))
        if not problems and (not isinstance(options, list | tuple) or len(options) < 2
                             or not all(_nonempty_str(o) for o in options)):
            problems.append((field, options, "expected >= 2 non-empty captions, the true one first"))
        options = [str(o) for o in options] if not problems else []
        answer = options[0] if options else ""
        order = np.random.default_rng([seed, i]).permutation(len(options))
        choices = [options[k] for k in order]
        problem = "Which caption describes the image? Answer with one of: " + "; ".join(choices)
        meta = {SOURCE_PROBLEMS: problems} if problems else {}
        out.append(SIFRecord(
            image=image, problem=problem, response=answer or "-", boxes=[],
            messages=default_messages(problem, answer) if answer else [], images=[image] if image else [],
            id=str(i), source="whatsup", choices=choices or None, meta=meta,
        ))
    return out


# SAYO's grid: 28 px tokens (Qwen2.5/3-VL's 14 px patches merged 2 x 2) on 448 x 448 images = 16 x 16.
SAYO_CELL = 28
SAYO_FIELDS = ("id", "type", "question", "answer", "short_answer", "image", "focus_area")


def sayo_focus_mask(focus_area: Any, rows: int, cols: int) -> np.ndarray:
    """SAYO `focus_area` -> bool [rows, cols]: inclusive token-index ranges `[[start, end], ...]`
    (a bare `[start, end]` or an int is one range) in row-major order on the image's grid of
    `SAYO_CELL` px tokens. Raises ValueError naming the range for anything outside the grid."""
    if isinstance(focus_area, int) and not isinstance(focus_area, bool):
        focus_area = [[focus_area, focus_area]]
    if (isinstance(focus_area, list | tuple) and len(focus_area) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in focus_area)):
        focus_area = [focus_area]
    if not isinstance(focus_area, list | tuple) or not focus_area:
        raise ValueError(f"expected a non-empty list of inclusive [start, end] token ranges, got {focus_area!r}")
    mask = np.zeros(rows * cols, bool)
    for r in focus_area:
        if isinstance(r, int) and not isinstance(r, bool):
            r = [r, r]
        if not (isinstance(r, list | tuple) and len(r) == 2 and all(
                isinstance(v, int | np.integer) and not isinstance(v, bool) for v in r)):
            raise ValueError(f"range {r!r}: expected [start, end] token indices")
        start, end = int(r[0]), int(r[1])
        if not 0 <= start <= end < rows * cols:
            raise ValueError(f"range {[start, end]}: outside the {rows} x {cols} grid of {SAYO_CELL} px tokens "
                             f"(indices 0..{rows * cols - 1})")
        mask[start:end + 1] = True
    return mask.reshape(rows, cols)


def _sayo_image(value: Any, root: str) -> Any:
    if isinstance(value, dict):  # HF datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str) and value:
        path = _resolve(value, root)
        if os.path.exists(path):
            return path
        try:
            import base64

            return base64.b64decode(value.split(",", 1)[-1], validate=True)
        except ValueError:
            return path
    return value


def read_sayo(path: str | os.PathLike) -> list[SIFRecord]:
    """SAYO records: parquet (read with pyarrow) or JSON / JSONL with fields `id, type, question,
    answer, short_answer, image, focus_area`.

    `image`: PNG bytes (parquet; also HF's `{"bytes", "path"}`), a path relative to the file, or
    base64. `focus_area`: inclusive token-index ranges on the image's grid of `SAYO_CELL` px tokens
    (16 x 16 for SAYO's 448 x 448 images) -> `SIFRecord.focus` (`sayo_focus_mask`). The answer is
    `short_answer` when present (what the accuracy check compares), else `answer`. SAYO has no boxes.
    A row whose `focus_area` is unusable or whose image size is no multiple of `SAYO_CELL` is
    flagged on that field (skipped and counted, or an error with strict validation).
    """
    path = os.fspath(path)
    root = os.path.dirname(os.path.abspath(path))
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        missing = [f for f in ("question", "image", "focus_area") if f not in table.column_names]
        if missing:
            raise ValueError(f"{path}: SAYO parquet lacks column(s) {missing} (has {table.column_names})")
        rows = table.to_pylist()
    else:
        rows = _load_jsonl(path) if path.endswith(".jsonl") else _load_json(path)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of SAYO records, got {type(rows).__name__}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            row = {}
        problems = []
        image = _sayo_image(row.get("image"), root)
        focus = None
        try:
            with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
                width, height = im.size
        except (OSError, TypeError, ValueError, AttributeError):
            width = height = None  # validation reports the image itself
        if width is not None:
            if width % SAYO_CELL or height % SAYO_CELL:
                problems.append(("image", f"{width}x{height}", f"size is no multiple of SAYO's {SAYO_CELL} px tokens"))
            else:
                try:
                    focus = sayo_focus_mask(row.get("focus_area"), height // SAYO_CELL, width // SAYO_CELL)
                except ValueError as e:
                    problems.append(("focus_area", row.get("focus_area"), str(e)))
        answer = row.get("short_answer") if _nonempty_str(row.get("short_answer")) else row.get("answer")
        meta: dict[str, Any] = {"type": row.get("type"), "long_answer": row.get("answer"), "family": row.get("type")}
        if problems:
            meta[SOURCE_PROBLEMS] = problems
        out.append(SIFRecord(
            image=image, problem=row.get("question"), response=answer, boxes=[],
            messages=[], images=[], id=str(row.get("id", i)), source="sayo", meta=meta, focus=focus,
        ))
    return out


# ---------------------------------------------------------------------------- scenes -> records


def save_depth_png(depth: np.ndarray, path: str | os.PathLike) -> None:
    """float [H, W] in [0, 1] -> 16-bit grayscale PNG (value * 65535)."""
    q = np.round(np.clip(depth, 0.0, 1.0) * 65535.0).astype(np.uint16)
    Image.fromarray(q).save(path)


def load_depth_png(path: str | os.PathLike) -> np.ndarray:
    """16-bit (or 8-bit) grayscale PNG -> float32 [H, W] in [0, 1] (`image.load_depth`)."""
    from sif_jax.data.image import load_depth

    return load_depth(path)


def record_from_scene(scene: Any, question: Any, trace: Any, out_dir: str | os.PathLike) -> SIFRecord:
    """Writes the scene's image (PNG) and depth (16-bit PNG) under `out_dir` and returns the
    record; `trace` is a `traces.Trace` (its text is the assistant turn)."""
    os.makedirs(out_dir, exist_ok=True)
    image = os.path.join(os.fspath(out_dir), f"scene_{scene.seed}.png")
    depth = os.path.join(os.fspath(out_dir), f"scene_{scene.seed}_depth.png")
    if not os.path.exists(image):
        Image.fromarray(scene.image).save(image)
        save_depth_png(scene.depth, depth)
    return SIFRecord(
        image=image, problem=question.text, response=question.answer,
        boxes=[list(b) for b in question.target_boxes], depth_image=depth,
        messages=default_messages(question.text, trace.text), images=[image],
        id=question.id, source="scenes",
        choices=list(question.choices) if question.choices is not None else None,
        meta={"family": question.family, "relation": question.relation,
              "split": question.split},
    )
