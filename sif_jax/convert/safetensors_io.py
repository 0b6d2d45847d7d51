"""Streaming safetensors reader/writer on NumPy memory maps (bfloat16 included, no pickle).

The `safetensors` package's NumPy backend has no bfloat16, which every released Qwen checkpoint
uses, so we read the (simple, documented) format ourselves: an 8-byte little-endian header
length, a JSON header {name: {dtype, shape, data_offsets}}, then raw little-endian bytes.
Tensors are memory-mapped and copied one at a time, so a file is never held twice in memory.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsFile:
    """Read-only view of one .safetensors file; `get(name)` returns a fresh NumPy array."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError(f"{self.path}: not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > 100 * 2**20:
                raise ValueError(f"{self.path}: header of {header_len} bytes is not plausible")
            header = json.loads(f.read(header_len))
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries: dict[str, dict] = header
        self._data_start = 8 + header_len
        self._map: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        if entry["dtype"] not in DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        begin, end = entry["data_offsets"]
        raw = self._map[self._data_start + begin : self._data_start + end]
        dtype = DTYPES[entry["dtype"]].newbyteorder("<")
        return np.frombuffer(raw, dtype=dtype).reshape(entry["shape"]).copy()


def write_safetensors(
    path: str | os.PathLike,
    tensors: Iterator[tuple[str, np.ndarray]] | list[tuple[str, np.ndarray]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Writes (name, array) pairs; arrays are consumed in order and written one at a time.

    The header needs every shape first, so `tensors` is materialised as a list of arrays that
    are already in memory (the caller's params); nothing is copied twice.
    """
    items = list(tensors)
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, array in items:
        dtype = np.dtype(array.dtype)
        if dtype not in NAMES:
            raise ValueError(f"tensor {name!r}: dtype {dtype} cannot be written to safetensors")
        nbytes = int(array.size) * dtype.itemsize
        header[name] = {"dtype": NAMES[dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, array in items:
            f.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())
    os.replace(tmp, path)
