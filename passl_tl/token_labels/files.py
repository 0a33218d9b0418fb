"""Per-image token-label files: naming, validation, atomic writing and conversion of PyTorch files.

A label map is ``[2, k, H, W]`` float16/float32 (top-k logits, their class ids). The label of
image ``.../<dir>/<stem>.<ext>`` has the key ``<dir>/<stem>`` and is stored as
``<label root>/<dir>/<stem>.npy``; the official files are ``<root>/<dir>/<stem>.pt`` (or
``.pth``), each a ``torch.save``'d float16 tensor.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..utils.atomic import write_file_atomic
from ..utils.torch_checkpoint import load_torch_file
from .packing import MIN_LABEL_WIDTH, class_id_problem

LABEL_DTYPES = (np.float16, np.float32)
NPY_SUFFIX = ".npy"
TORCH_SUFFIXES = (".pt", ".pth")


def label_key(image_path: str) -> str:
    """``<dir>/<stem>`` of an image path: names its label in every layout."""
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return f"{os.path.basename(os.path.dirname(image_path))}/{stem}"


class BadLabelError(ValueError):
    """A token label that cannot be used; ``reason`` says what is wrong without naming the label.
    One-argument construction works too (as a DataLoader worker's error is re-raised)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


def check_label_map(label: Any, source: str, expected_shape: Sequence[int] | None = None,
                    num_classes: int | None = None) -> np.ndarray:
    """``label`` if it is a ``[2, k, H, W]`` float16/float32 map (of ``expected_shape`` when given) and,
    with ``num_classes``, holds finite logits and integer class ids in ``[0, num_classes)``; else a
    :class:`BadLabelError` naming ``source``."""
    if not isinstance(label, np.ndarray):
        reason = f"holds a {type(label).__name__}, not a [2, k, H, W] label map"
        raise BadLabelError(f"{source} {reason}", reason)
    shape = tuple(label.shape)
    valid = (label.dtype in LABEL_DTYPES and len(shape) == 4 and shape[0] == 2 and all(shape)
             and shape[3] >= MIN_LABEL_WIDTH)
    if not valid or (expected_shape is not None and shape != tuple(expected_shape)):
        wanted = (list(expected_shape) if expected_shape is not None
                  else f"[2, k, H, W] with W >= {MIN_LABEL_WIDTH}")
        reason = f"has shape {list(shape)} dtype {label.dtype}; expected {wanted} float16/float32"
        raise BadLabelError(f"{source} {reason}", reason)
    if num_classes is not None:
        logits, ids = label.astype(np.float32)  # float32 arithmetic is several times faster than float16
        problem = ("has non-finite logits (NaN or inf)" if not np.isfinite(logits).all()
                   else class_id_problem(ids, num_classes))
        if problem:
            raise BadLabelError(f"{source}: {problem}", problem)
    return label


def read_label_file(path: str, expected_shape: Sequence[int] | None = None,
                    mmap_mode: str | None = None) -> np.ndarray:
    """The validated label map of a ``.npy`` file (memory-mapped with ``mmap_mode``)."""
    try:
        label = np.load(path, mmap_mode=mmap_mode)
    except (OSError, ValueError, EOFError) as e:
        raise BadLabelError(f"cannot read token-label file {path}: {e}", f"unreadable: {e}") from e
    return check_label_map(label, f"token-label file {path}", expected_shape)


def read_torch_label(path: str, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """The validated label map of a ``torch.save`` file, read without PyTorch."""
    try:
        label = load_torch_file(path)
    except Exception as e:  # damage anywhere in a downloaded file: report it as unreadable
        raise BadLabelError(f"label file {path} is unreadable: {e}", f"unreadable: {e}") from e
    return check_label_map(label, f"label file {path}", expected_shape)


def find_label_files(root: str, suffixes: Sequence[str]) -> dict[str, str]:
    """``{key: path}`` of the files ``<root>/<dir>/<stem><suffix>``, sorted by key."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"label directory {root} does not exist")
    found: dict[str, str] = {}
    for folder in sorted(os.listdir(root)):
        directory = os.path.join(root, folder)
        if folder.startswith(".") or not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            stem, suffix = os.path.splitext(name)
            if suffix not in suffixes:
                continue
            key, path = f"{folder}/{stem}", os.path.join(directory, name)
            if key in found:
                raise ValueError(f"two label files for {key}: {found[key]} and {path}; keep one")
            found[key] = path
    return found


def save_npy_atomic(array: np.ndarray, path: str) -> None:
    """``np.save`` to a temporary file beside ``path``, then rename it over ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        write_file_atomic(path, lambda tmp: _save_npy(array, tmp))
    except OSError as e:
        raise OSError(f"cannot write {path}: {e}") from e


def _save_npy(array: np.ndarray, path: str) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to the temporary's name
        np.save(f, array)


def is_complete_label(path: str, shape: Sequence[int]) -> bool:
    """Whether ``path`` holds a complete float16 label map of ``shape`` (a finished write)."""
    try:
        return read_label_file(path, shape, mmap_mode="r").dtype == np.float16
    except ValueError:
        return False


def convert_label_file(src: str, dst: str, shape: Sequence[int]) -> bool:
    """Write the label map of PyTorch file ``src`` (which must have ``shape``) to ``dst`` as float16
    ``.npy``; False, doing nothing, when ``dst`` already holds one."""
    if is_complete_label(dst, shape):
        return False
    label = read_torch_label(src, shape)
    half = label.astype(np.float16)
    if not np.array_equal(half[1], label[1]):
        raise ValueError(f"label file {src}: its class ids are not exact in float16 (ids above 2048)")
    save_npy_atomic(half, dst)
    return True
