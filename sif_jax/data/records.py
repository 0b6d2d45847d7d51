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
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

BOX_FIELD = "normalized_solution_round.bbox_3d"
IMAGE_TOKEN = "<image>"


@dataclasses.dataclass
class SIFRecord:
    """One example. Paths are as given or resolved against the reader's image root.

    boxes: the GT boxes (`normalized_solution_round.bbox_3d`), normalised [x1, y1, x2, y2].
    choices: options of a multiple-choice question (None otherwise).
    source: which reader made it ("sif", "gqa", "vsr", "whatsup", "scenes").
    meta: anything else a reader keeps (GQA question types, VSR relation, ...).
    """

    image: Any
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
        if not _nonempty_str(r.image):
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


def read_sif_json(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None
) -> list[SIFRecord]:
    """Reads SIF-50K style JSON (a list of objects) or JSONL; relative paths are taken from
    `image_root` (default: the file's directory)."""
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
            images = [_resolve(p, root) for p in images]
        out.append(SIFRecord(
            image=_resolve(row.get("image"), root),
            problem=row.get("problem"),
            response=row.get("response"),
            boxes=boxes if boxes is not None else [],
            depth_image=_resolve(row.get("depth_image"), root),
            messages=row.get("messages", []),
            images=images,
            id=str(row.get("id", i)),
            source=str(row.get("source", "sif")),
            choices=row.get("choices"),
            meta=row.get("meta") if isinstance(row.get("meta"), dict) else {},
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
) -> list[SIFRecord]:
    """GQA: `{qid: {imageId, question, answer, annotations: {question|answer|fullAnswer:
    {span: objectId}}, ...}}` + scene graphs `{imageId: {width, height, objects: {objectId:
    {name, x, y, w, h, ...}}}}`. Target boxes are the annotated objects (question, answer and
    full answer, first mention first), normalised by the image size and clipped to [0, 1]."""
    questions = _load_json(questions_json)
    graphs = _load_json(scene_graphs_json)
    for name, value in (("questions", questions), ("scene graphs", graphs)):
        if not isinstance(value, dict):
            raise ValueError(f"GQA {name} file: expected a JSON object keyed by id")
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
        out.append(SIFRecord(
            image=image, problem=problem, response=answer, boxes=boxes,
            messages=default_messages(str(problem), str(answer)), images=[image],
            id=str(qid), source="gqa", meta=meta,
        ))
    return out


def read_vsr(jsonl: str | os.PathLike, image_root: str | os.PathLike) -> list[SIFRecord]:
    """VSR: JSONL lines `{image, caption, label (1 true / 0 false), relation, ...}`; each becomes
    a yes/no question about the caption. VSR has no boxes."""
    out = []
    for i, row in enumerate(_load_jsonl(jsonl)):
        caption = row.get("caption")
        label = row.get("label")
        # An unknown label gives an empty answer, which validation reports.
        answer = "yes" if label in (1, "1", "true", "True") else (
            "no" if label in (0, "0", "false", "False") else ""
        )
        problem = f'Is this statement about the image true: "{caption}"? Answer yes or no.'
        image = _resolve(row.get("image"), image_root)
        out.append(SIFRecord(
            image=image, problem=problem, response=answer, boxes=[],
            messages=default_messages(problem, answer), images=[image],
            id=str(row.get("id", i)), source="vsr", choices=["yes", "no"],
            meta={"relation": row.get("relation"), "caption": caption},
        ))
    return out


def read_whatsup(
    path: str | os.PathLike, image_root: str | os.PathLike, seed: int = 0
) -> list[SIFRecord]:
    """WhatsUp: a JSON list of `{image_path, caption_options}` whose first option is the true
    caption. Options are shuffled per record (seeded) so the answer's position is no cue."""
    out = []
    for i, row in enumerate(_load_json(path)):
        options = list(row.get("caption_options") or [])
        answer = options[0] if options else ""
        order = np.random.default_rng([seed, i]).permutation(len(options))
        choices = [options[k] for k in order]
        problem = "Which caption describes the image? Answer with one of: " + "; ".join(choices)
        image = _resolve(row.get("image_path"), image_root)
        out.append(SIFRecord(
            image=image, problem=problem, response=answer, boxes=[],
            messages=default_messages(problem, answer), images=[image],
            id=str(i), source="whatsup", choices=choices,
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
