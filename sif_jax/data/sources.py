"""The data-source registry: one `config.data.source` string -> raw-example sources for SFT, GRPO
and evaluation (`train_data.TrainData`, `eval_source`).

    builtin                                          the procedural spatial task (nothing on disk)
    tfds:<path>[:<name>]                             a built `sif_spatial/<size>` or `sif_local`
                                                     (python -m sif_jax.data.tfds_sif); <path> is its
                                                     --data_dir or any folder below it, as printed
                                                     ("built ... in <path>"); <name> picks one build
                                                     when the folder holds several
    sif_json:<file.json|.jsonl>[:<image_root>]       SIF-50K records as SIFThinker's produce.py writes
                                                     them (relative and `../data/` paths: see
                                                     `records.read_sif_json`)
    gqa:<questions.json>:<scene_graphs.json>:<image_dir>    streamed, with a progress bar
    sayo:<file.parquet|.json|.jsonl>                 SAYO records (image bytes + focus_area)
    vsr:<file.jsonl>:<image_dir>
    whatsup:<file.json>:<image_dir>                  Controlled-A/B or COCO-/VG-spatial

A `gs://` (or other `scheme://`) path is one field. File sources are read into `records.SIFRecord`s,
checked (`records.usable_records`: a bad record is skipped and counted with its first ids, or is an
error naming the source field with `strict`), and served as raw examples (`RecordSource`). Depth
maps go through `image.load_depth` (SIF-50K's Spectral_r maps decoded as SIFThinker does).

For training, a file source without a separate eval source is split: `eval_examples` records chosen
by a seeded permutation are held out, the rest train (`split_records`).
"""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from sif_jax.data import records as rec

USAGE = {
    "builtin": "builtin",
    "tfds": "tfds:<data_dir>[:<name>]",
    "sif_json": "sif_json:<file.json|file.jsonl>[:<image_root>]",
    "gqa": "gqa:<questions.json>:<scene_graphs.json>:<image_dir>",
    "sayo": "sayo:<file.parquet|file.json|file.jsonl>",
    "vsr": "vsr:<file.jsonl>:<image_dir>",
    "whatsup": "whatsup:<file.json>:<image_dir>",
}
# (required, optional) fields after the kind
_ARITY = {"tfds": (1, 1), "sif_json": (1, 1), "gqa": (3, 0), "sayo": (1, 0), "vsr": (2, 0), "whatsup": (2, 0)}


def known_sources() -> str:
    return ", ".join(USAGE.values())


def split_spec(source: str, field: str = "config.data.source") -> tuple[str, list[str]]:
    """'kind:a:b' -> ('kind', ['a', 'b']), keeping 'gs://bucket/x' whole. ValueError naming `field`
    for an unknown kind or a wrong number of parts."""
    kind, _, rest = str(source).partition(":")
    if kind not in USAGE:
        raise ValueError(f"{field}={source!r}: unknown source {kind!r}; expected {known_sources()}")
    if kind == "builtin":
        if rest:
            raise ValueError(f"{field}={source!r}: builtin takes no path")
        return kind, []
    parts = rest.split(":") if rest else []
    fields: list[str] = []
    for part in parts:  # re-join "gs" + "//bucket/..." (a URL scheme)
        if fields and part.startswith("//") and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", fields[-1]):
            fields[-1] += ":" + part
        else:
            fields.append(part)
    need, optional = _ARITY[kind]
    if not need <= len(fields) <= need + optional or not all(fields):
        raise ValueError(f"{field}={source!r}: expected {USAGE[kind]}")
    return kind, fields


def _exists(path: str) -> bool:
    if "://" in path:
        from etils import epath

        return epath.Path(path).exists()
    return os.path.exists(path)


def check_spec(source: str, field: str = "config.data.source") -> tuple[str, list[str]]:
    """`split_spec`, then FileNotFoundError naming `field` for a path that does not exist."""
    kind, fields = split_spec(source, field)
    for f in fields[:1] if kind == "tfds" else fields:  # (a tfds source's second field is the build name)
        if not _exists(f):
            raise FileNotFoundError(f"{field}={source!r}: {f!r} does not exist")
    return kind, fields


# ---------------------------------------------------------------------------- TFDS


def find_tfds_builds(path: str) -> list[tuple[str, str]]:
    """(name, data_dir) of every sif_jax TFDS build at or below `path` (a data_dir, a builder folder
    `<data_dir>/sif_spatial/small`, or a version folder `.../1.0.0`): each has a dataset_info.json."""
    path = os.path.abspath(path)
    found = []
    patterns = ["dataset_info.json", "*/dataset_info.json", "*/*/dataset_info.json", "*/*/*/dataset_info.json"]
    for info in sorted({p for pat in patterns for p in glob.glob(os.path.join(path, pat))}):
        parts = os.path.dirname(info).split(os.sep)  # [..., builder, (config,) version]
        for i in range(len(parts) - 1, 0, -1):
            if parts[i] in ("sif_spatial", "sif_local"):
                name = "/".join(parts[i:-1])  # sif_spatial/<config> or sif_local
                found.append((name, os.sep.join(parts[:i]) or os.sep))
                break
    return found


def resolve_tfds(fields: Sequence[str], source: str, field: str = "config.data.source") -> tuple[str, str]:
    """(name, data_dir) of a `tfds:<path>[:<name>]` source."""
    path = fields[0]
    name = fields[1] if len(fields) > 1 else None
    if "://" in path:  # no directory walk on object stores: the data_dir and name as given
        return name or "sif_spatial/small", path
    builds = find_tfds_builds(path)
    if name is not None:
        builds = [b for b in builds if b[0] == name or b[0].split("/")[-1] == name]
    if not builds:
        raise ValueError(f"{field}={source!r}: no sif_spatial/* or sif_local build at or below {path!r}; build one "
                         f"with python -m sif_jax.data.tfds_sif --size=small --data_dir={path}")
    if len(set(builds)) > 1:
        names = ", ".join(sorted({b[0] for b in builds}))
        raise ValueError(f"{field}={source!r}: {path!r} holds several builds ({names}); choose one with "
                         f"tfds:{path}:<name>")
    return builds[0]


# ---------------------------------------------------------------------------- records


def read_records(source: str, *, whatsup_seed: int = 0, progress: bool = False,
                 field: str = "config.data.source") -> list[rec.SIFRecord]:
    """The records of a file source (not builtin / tfds). GQA target objects missing from the scene
    graph are reported on stderr (count and first question ids)."""
    kind, fields = check_spec(source, field)
    if kind == "sif_json":
        return rec.read_sif_json(fields[0], image_root=fields[1] if len(fields) > 1 else None)
    if kind == "gqa":
        records = rec.read_gqa(*fields, progress=progress)
        n, objects, ids = rec.gqa_missing_targets(records)
        if n:
            print(f"warning: {source}: {n} question(s) name {objects} target object(s) that their scene graph "
                  f"lacks (those targets have no box; ids: {', '.join(ids)}{', ...' if n > len(ids) else ''})",
                  file=sys.stderr, flush=True)
        return records
    if kind == "sayo":
        return rec.read_sayo(fields[0])
    if kind == "vsr":
        return rec.read_vsr(*fields)
    if kind == "whatsup":
        return rec.read_whatsup(*fields, seed=whatsup_seed)
    raise ValueError(f"{field}={source!r}: {kind} is not a file source")


_WHATSUP_RELATIONS = ("left of", "right of", "in front of", "behind", "on top of", "under", "above", "below", "on")


def whatsup_relation(caption: Any) -> str | None:
    """The spatial relation a WhatsUp caption states ('A mug to the left of a plate' -> 'left of');
    None when it names none of `_WHATSUP_RELATIONS`."""
    words = f" {str(caption).lower()} "
    for rel in _WHATSUP_RELATIONS:
        if f" {rel} " in words:
            return rel
    return None


def record_to_example(record: rec.SIFRecord, index: int) -> dict[str, Any]:
    """A `records.SIFRecord` -> a pipeline raw example (image read from its file or bytes, depth
    through `image.load_depth`, SAYO's focus mask as `focus`). An unreadable image raises
    `errors.InputError` naming the record."""
    from sif_jax.data.image import load_image, read_image_file
    from sif_jax.errors import InputError, one_line

    meta = record.meta if isinstance(record.meta, dict) else {}
    source = record.source or "records"
    family, relation, split = meta.get("family"), meta.get("relation"), meta.get("split")
    if source == "gqa":
        family = (meta.get("types") or {}).get("structural") or "gqa"
    elif source == "whatsup":
        relation = whatsup_relation(record.response)
    depth = None
    if record.depth_image:
        try:
            depth = rec.load_depth_png(record.depth_image)
        except (OSError, ValueError) as e:
            raise ValueError(f"record {record.id!r}: cannot read depth image {record.depth_image!r}: {e}") from None
    if isinstance(record.image, bytes | bytearray):
        try:
            image = load_image(bytes(record.image))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read record {record.id!r} image bytes: {one_line(e)}") from None
    else:
        image = read_image_file(record.image, what=f"record {record.id!r} image")
    return {
        "id": record.id or str(index),
        "image": image,
        "depth": depth,
        "depth_image": record.depth_image or None,  # the stored picture, for two-image prompts
        "problem": record.problem,
        "answer": record.response,
        "choices": [str(c) for c in (record.choices or [])],
        "family": family or source,
        "relation": relation or "",
        "split": split or source,
        "boxes": np.asarray(record.boxes or [], np.float32).reshape(-1, 4),
        "trace": assistant_trace(record),
        "index": index,
        "scene_seed": None,
        "focus": record.focus,
    }


def assistant_trace(record: rec.SIFRecord) -> str:
    """The SFT target: the last assistant turn of `messages` ('' when there is none)."""
    for m in reversed(record.messages if isinstance(record.messages, list) else []):
        if isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), str):
            return m["content"]
    return ""


class RecordSource:
    """Random access over records as raw examples (images are read on access). `skipped`: the
    invalid records left out of it (`records.SkippedRecords`)."""

    def __init__(self, records: Sequence[rec.SIFRecord], skipped: rec.SkippedRecords | None = None,
                 with_traces: bool = False) -> None:
        self.records = list(records)
        self.skipped = skipped if skipped is not None else rec.SkippedRecords()
        self.with_traces = with_traces

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = record_to_example(self.records[int(index)], int(index))
        if not self.with_traces:
            example["trace"] = ""
        return example

    def __repr__(self) -> str:
        return f"RecordSource({len(self.records)} records, {self.skipped.count} skipped)"


def usable(records: Sequence[rec.SIFRecord], source: str, *, strict: bool, require_trace: bool = False,
           field: str = "config.data.source") -> tuple[list[rec.SIFRecord], rec.SkippedRecords]:
    """`records.usable_records` with the errors worded for a config: one line naming the source;
    `require_trace`: records without an assistant turn (nothing to imitate in SFT) are bad too."""
    if not records:
        raise ValueError(f"{field}={source!r}: no records")
    try:
        good, skipped = rec.usable_records(records, strict=strict, check_files=True)
    except ValueError as e:
        lines = str(e).splitlines()
        shown = "; ".join(lines[1:4]) + (f"; ... ({len(lines) - 4} more)" if len(lines) > 4 else "")
        raise ValueError(f"{lines[0].rstrip(':')} of {source} (strict_records=True): {shown}") from None
    if require_trace:
        no_trace = [r for r in good if not assistant_trace(r)]
        if no_trace and strict:
            raise ValueError(f"{field}={source!r}: record {no_trace[0].id!r}: field 'messages' has no assistant "
                             "turn to learn from in SFT")
        if no_trace:
            ids = tuple(r.id for r in no_trace[: rec.SHOWN_IDS])
            errors = tuple(f"record {r.id}: field 'messages': no assistant turn for SFT" for r in no_trace[:3])
            skipped = rec.SkippedRecords(skipped.count + len(no_trace), skipped.ids + ids, skipped.errors + errors)
            good = [r for r in good if assistant_trace(r)]
    if not good:
        raise ValueError(f"{field}={source!r}: no valid record; {skipped.summary()}")
    return good, skipped


def split_records(records: Sequence[rec.SIFRecord], eval_examples: int, seed: int,
                  field: str = "config.data.eval_examples") -> tuple[list[rec.SIFRecord], list[rec.SIFRecord]]:
    """(train, held-out): `eval_examples` records picked by a permutation seeded with `seed` are held
    out (in file order), the rest train. ValueError when that leaves nothing to train on."""
    n = len(records)
    if eval_examples <= 0:
        return list(records), []
    if eval_examples >= n:
        raise ValueError(f"{field}={eval_examples}: the source has only {n} usable record(s); hold out fewer "
                         "(or give data.eval_source)")
    held = set(np.random.default_rng(seed).permutation(n)[:eval_examples].tolist())
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def open_records(source: str, *, strict: bool, whatsup_seed: int = 0, limit: int = 0, progress: bool = False,
                 field: str = "config.data.source") -> RecordSource:
    """A checked `RecordSource` of a file source (`limit` > 0: its first `limit` records)."""
    records = read_records(source, whatsup_seed=whatsup_seed, progress=progress, field=field)
    if limit > 0:
        records = records[:limit]
    good, skipped = usable(records, source, strict=strict, field=field)
    return RecordSource(good, skipped)


def tfds_source(source: str, split: str, field: str = "config.data.source") -> Any:
    """A `pipeline.TfdsSource` of a `tfds:` source's split."""
    from sif_jax.data import pipeline

    _, fields = check_spec(source, field)
    name, data_dir = resolve_tfds(fields, source, field)
    try:
        return pipeline.TfdsSource(name, split=split, data_dir=data_dir)
    except Exception as e:  # TFDS raises its own types for a missing split / build
        raise ValueError(f"{field}={source!r}: cannot open {name} split {split!r} in {data_dir}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def tfds_split_names(source: str, field: str = "config.data.source") -> list[str]:
    """The split names of a `tfds:` source's build (`sif_spatial/*`: train and test; a
    `tfds_sif --local` build of `sif_local`: train only)."""
    import tensorflow_datasets as tfds

    from sif_jax.data import tfds_sif  # noqa: F401  (registers the builders)

    _, fields = check_spec(source, field)
    name, data_dir = resolve_tfds(fields, source, field)
    return sorted(tfds.builder(name, data_dir=data_dir).info.splits.keys())


def tfds_train_and_held(source: str, held_examples: int,
                        field: str = "config.data.source") -> tuple[Any, Any | None]:
    """(train, held-out) sources of a `tfds:` build: its test split when it has one, else (a
    `sif_local` build has train only) the last `held_examples` of train, which the train source
    then leaves out (TFDS split slicing, `train[:-n]` / `train[-n:]`). `held_examples` 0: no
    held-out source. Raises ValueError naming the field when train is too small to hold out from."""
    if held_examples <= 0:
        return tfds_source(source, "train", field), None
    if "test" in tfds_split_names(source, field):
        return tfds_source(source, "train", field), tfds_source(source, "test", field)
    train = tfds_source(source, "train", field)
    if len(train) <= held_examples:
        raise ValueError(f"{field}={source!r}: its build has a train split only, of {len(train)} examples, too few to "
                         f"hold out config.data.eval_examples={held_examples}; lower it, or set "
                         "config.data.eval_source")
    return (tfds_source(source, f"train[:-{held_examples}]", field),
            tfds_source(source, f"train[-{held_examples}:]", field))


def report_skipped(what: str, skipped: rec.SkippedRecords) -> None:
    if skipped.count:
        print(f"warning: {what}: {skipped.summary('records')}", file=sys.stderr, flush=True)


def eval_source(data: Any) -> Sequence[dict[str, Any]]:
    """The raw-example source of an eval config's `data` block (`configs/eval.py`: source,
    num_examples, image_size, seed, whatsup_seed, strict_records): the built-in task's test split,
    a TFDS build's test split, or a file source's records.

    Records with a problem (`records.record_errors`, e.g. a GQA box that clips to zero area or a
    missing image) are skipped and counted in the source's `skipped`; `data.strict_records` makes
    any of them an error instead. No usable record at all is an error (ValueError naming the field).
    """
    from sif_jax.data import pipeline
    from sif_jax.data.scenes import SceneConfig

    kind, _ = check_spec(data.source)
    if kind == "builtin":
        if data.num_examples < 1:
            raise ValueError(f"config.data.num_examples={data.num_examples}: the built-in task needs >= 1")
        scene = SceneConfig(height=data.image_size, width=data.image_size)
        return pipeline.BuiltinSource(seed=data.seed, size=data.num_examples, split="test", scene_config=scene)
    if kind == "tfds":
        # a `tfds_sif --local` build has a train split only: evaluate on it
        return tfds_source(data.source, "test" if "test" in tfds_split_names(data.source) else "train")
    return open_records(data.source, strict=bool(data.get("strict_records", False)),
                        whatsup_seed=data.whatsup_seed, limit=data.num_examples, progress=True)
