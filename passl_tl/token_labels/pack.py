"""Packed token labels: per-image label maps stacked into a few ``.npy`` shards plus an index.

A pack directory holds ``labels_00000.npy``, ``labels_00001.npy``, ... (``[n, 2, k, H, W]``
arrays, read through memory mapping) and ``index.json``::

    {"format": "passl_tl token-label pack", "version": 1, "shape": [2, k, H, W], "dtype": "float16",
     "shards": [{"file": "labels_00000.npy", "keys": ["<dir>/<stem>", ...]}, ...]}

where row ``r`` of a shard is the label of the image whose key (``files.label_keys``) is
``keys[r]``. The dtype is float32 when any packed label file is (class ids above 2048), else float16.
"""
from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..utils.atomic import write_directory_atomic
from .files import LABEL_DTYPES, NPY_SUFFIX, BadLabelError, find_label_files, label_keys, read_label_file

INDEX_NAME = "index.json"
SHARD_NAME = "labels_{:05d}.npy"
FORMAT = "passl_tl token-label pack"
VERSION = 1


@dataclass
class PackIndex:
    """A pack's ``index.json``: label shape and dtype, and each shard's file and row keys."""

    root: str
    shape: tuple[int, ...]
    dtype: np.dtype
    shards: list[tuple[str, list[str]]]

    def locations(self) -> dict[str, tuple[int, int]]:
        """``{key: (shard number, row)}``."""
        where = {}
        for number, (_, keys) in enumerate(self.shards):
            for row, key in enumerate(keys):
                if key in where:
                    raise ValueError(f"{os.path.join(self.root, INDEX_NAME)} lists {key} twice")
                where[key] = (number, row)
        return where

    def shard_files(self) -> list[tuple[str, int]]:
        """``(path, number of rows)`` of each shard."""
        return [(os.path.join(self.root, name), len(keys)) for name, keys in self.shards]


def open_shard(path: str, rows: int, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """Shard ``path`` memory-mapped read-only, checked to hold ``rows`` labels of ``shape`` and ``dtype``."""
    try:
        labels = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise BadLabelError(f"cannot read token-label shard {path}: {e}", f"shard {path} unreadable: {e}") from e
    expected = (rows, *shape)
    if labels.shape != expected or labels.dtype != dtype:
        reason = (f"shard {path} has shape {list(labels.shape)} dtype {labels.dtype}; its index expects "
                  f"{list(expected)} {dtype}")
        raise BadLabelError(f"token-label {reason}", reason)
    return labels


def read_pack_index(root: str) -> PackIndex:
    """The index of the pack directory ``root``; errors name the directory or file at fault."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"label_root {root} does not exist")
    path = os.path.join(root, INDEX_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{root} is not a token-label pack: it has no {INDEX_NAME} (write one with "
                                f"tools/pack_labels.py, or read per-image files with label_format: files)")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"not a '{FORMAT}' version {VERSION}")
        dtype = np.dtype(meta["dtype"])
        if dtype not in LABEL_DTYPES:
            raise ValueError(f"dtype {dtype} is not a label dtype (float16, float32)")
        return PackIndex(root, tuple(int(s) for s in meta["shape"]), dtype,
                         [(s["file"], list(s["keys"])) for s in meta["shards"]])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a valid token-label pack index: {e}") from e


@dataclass
class PackPlan:
    """What to pack (``(key, path)`` of the good labels, their shape and dtype) and what is wrong."""

    labels: list[tuple[str, str]]
    shape: tuple[int, ...]
    dtype: np.dtype
    missing: list[str]  # images without a label file
    extra: list[str]  # label files without an image
    invalid: list[str]  # one error naming the file per bad label file

    @property
    def problems(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.invalid)


def plan_pack(images: Sequence[str], label_root: str, step: Callable[[], object] = lambda: None) -> PackPlan:
    """Pair each image with its label file under ``label_root`` and check every file (header only).

    Labels must share one shape, the most common one; the others are invalid. They are packed as
    float32 when any of them is (float16 ones are widened exactly), else as float16.
    ``step`` is called after each image.
    """
    files = find_label_files(label_root, (NPY_SUFFIX,))
    keys = label_keys(images)
    used = set(keys)
    invalid = []
    headers: dict[str, tuple[tuple[int, ...], np.dtype] | None] = {}
    for key in keys:
        if key in files and key not in headers:
            try:
                label = read_label_file(files[key], mmap_mode="r")
                headers[key] = (label.shape, label.dtype)
            except ValueError as e:
                headers[key] = None
                invalid.append(str(e))
        step()
    valid = {key: header for key, header in headers.items() if header is not None}
    if not valid:
        raise FileNotFoundError(f"none of the {len(used)} images has a valid label file under {label_root}")
    common = collections.Counter(shape for shape, _ in valid.values()).most_common(1)[0][0]
    labels, dtypes = [], set()
    for key, (shape, dtype) in valid.items():
        if shape == common:
            labels.append((key, files[key]))
            dtypes.add(dtype)
        else:
            invalid.append(f"token-label file {files[key]} has shape {list(shape)}; most labels have {list(common)}")
    missing = [image for image, key in zip(images, keys) if key not in files]
    extra = [path for key, path in files.items() if key not in used]
    return PackPlan(labels, common, np.result_type(*dtypes), missing, extra, invalid)


def write_pack(out_dir: str, plan: PackPlan, shard_size: int,
               step: Callable[[], object] = lambda: None) -> PackIndex:
    """Write the labels of ``plan`` as a pack at ``out_dir`` (built in a temporary directory, then
    renamed) and return its index. ``step`` is called after each label.
    """
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    if os.path.exists(out_dir):
        raise FileExistsError(f"{out_dir} already exists; remove it or choose another output directory")
    shards = write_directory_atomic(out_dir, lambda tmp: _write_shards(tmp, plan, shard_size, step))
    return PackIndex(out_dir, plan.shape, plan.dtype, [(s["file"], s["keys"]) for s in shards])


def _write_shards(directory: str, plan: PackPlan, shard_size: int,
                  step: Callable[[], object]) -> list[dict[str, object]]:
    """Create ``directory`` with the shards and ``index.json`` of ``plan``; returns the index's shard entries."""
    os.makedirs(directory)
    shards = []
    for start in range(0, len(plan.labels), shard_size):
        chunk = plan.labels[start:start + shard_size]
        name = SHARD_NAME.format(len(shards))
        rows = np.lib.format.open_memmap(os.path.join(directory, name), mode="w+", dtype=plan.dtype,
                                         shape=(len(chunk), *plan.shape))
        for row, (_, path) in enumerate(chunk):
            rows[row] = read_label_file(path, plan.shape)
            step()
        rows.flush()
        del rows
        shards.append({"file": name, "keys": [key for key, _ in chunk]})
    index = {"format": FORMAT, "version": VERSION, "shape": list(plan.shape), "dtype": plan.dtype.name,
             "shards": shards}
    with open(os.path.join(directory, INDEX_NAME), "w", encoding="utf-8") as f:
        json.dump(index, f)
    return shards
