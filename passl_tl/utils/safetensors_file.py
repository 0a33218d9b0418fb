"""Read ``.safetensors`` files (Hugging Face hub weights, e.g. timm's) with NumPy alone.

The format: an 8-byte little-endian header length N, N bytes of UTF-8 JSON mapping each tensor name
to its dtype, shape and ``data_offsets`` [begin, end) into the byte buffer that follows (an optional
``__metadata__`` entry holds strings), then that buffer, little-endian. The whole header is checked
before any tensor is read, so a damaged or hostile file is a ValueError naming it, never a read
outside the file or an array of the wrong size.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

HEADER_LENGTH_BYTES = 8
METADATA_KEY = "__metadata__"
# safetensors dtype -> how its bytes are read (BF16 is widened and BOOL made 0/1 after reading).
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U8": "u1", "BOOL": "u1"}


def load_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor in ``path`` as an array that owns its memory, in the header's order;
    BF16 comes back as float32 (exactly: bfloat16 is the high half of a float32)."""
    size = os.path.getsize(path)
    if size < HEADER_LENGTH_BYTES:
        raise ValueError(f"{path}: not a safetensors file: {size} bytes, fewer than the "
                         f"{HEADER_LENGTH_BYTES}-byte header length")
    raw = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)  # so copies are plain arrays
    header_length = int.from_bytes(raw[:HEADER_LENGTH_BYTES].tobytes(), "little")
    if header_length > size - HEADER_LENGTH_BYTES:
        raise ValueError(f"{path}: header length {header_length} runs past the end of the file ({size} bytes)")
    start = HEADER_LENGTH_BYTES + header_length
    entries = _read_header(raw[HEADER_LENGTH_BYTES:start].tobytes(), path)
    spans = {name: _check_entry(name, entry, size - start, path) for name, entry in entries.items()}
    _check_disjoint(spans, path)
    return {name: _to_array(raw[start + begin:start + end], entries[name]["dtype"], entries[name]["shape"])
            for name, (begin, end) in spans.items()}


def _read_header(text: bytes, path: str) -> dict[str, Any]:
    """The header's tensor entries (``__metadata__`` left out)."""
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: the safetensors header is not UTF-8 JSON: {e}") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header must be a JSON object, got {type(header).__name__}")
    header.pop(METADATA_KEY, None)
    return header


def _check_entry(name: str, entry: Any, buffer_size: int, path: str) -> tuple[int, int]:
    """The [begin, end) byte span of tensor ``name`` after checking its dtype, shape and offsets."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise ValueError(f"{path}: tensor {name!r}: expected an object with dtype, shape and data_offsets, "
                         f"got {entry!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise ValueError(f"{path}: tensor {name!r}: unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
    if not _is_int_list(shape) or min(shape, default=0) < 0:
        raise ValueError(f"{path}: tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    if not _is_int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1] <= buffer_size:
        raise ValueError(f"{path}: tensor {name!r}: data_offsets {offsets!r} out of range: expected two "
                         f"integers [begin, end], 0 <= begin <= end <= {buffer_size} (the data buffer's size)")
    expected = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != expected:
        raise ValueError(f"{path}: tensor {name!r}: data_offsets {offsets} span {offsets[1] - offsets[0]} bytes, "
                         f"but {dtype} of shape {shape} needs {expected}")
    return offsets[0], offsets[1]


def _check_disjoint(spans: dict[str, tuple[int, int]], path: str) -> None:
    """No two tensors share a byte (empty tensors hold none, wherever they point)."""
    ordered = sorted((span, name) for name, span in spans.items() if span[0] < span[1])
    for (before, first), (after, second) in zip(ordered, ordered[1:]):
        if after[0] < before[1]:
            raise ValueError(f"{path}: tensors {first!r} {list(before)} and {second!r} {list(after)} "
                             f"overlap in the data buffer")


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _to_array(data: np.ndarray, dtype: str, shape: list[int]) -> np.ndarray:
    """The bytes ``data`` as a native-order array of ``shape`` that no longer refers to the file."""
    values = data.view(DTYPES[dtype]).reshape(shape)
    if dtype == "BF16":
        wide = values.astype(np.uint32)
        wide <<= 16  # in place: a 0-d array stays an array
        return wide.view(np.float32)
    return values.astype(bool if dtype == "BOOL" else values.dtype.newbyteorder("="))
