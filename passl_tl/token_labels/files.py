"""Per-image token-label files: naming, validation, atomic writing and conversion of PyTorch files.

A label map is ``[2, k, H, W]`` float16/float32 (top-k logits, their class ids): float16 when
every id is at most 2048 (float16 holds the integers exactly only up to there), else float32
(exact to 2**24). The label of image ``.../<dir>/<stem>.<ext>`` has the key ``<dir>/<stem>``
(stem: the name up to its last dot) and is stored as ``<label root>/<key>.npy``; when images of
one directory share a stem, each of them has the key ``<dir>/<stem>.<ext>`` instead
(:func:`label_keys`). The official files are ``<root>/<dir>/<stem>.pt`` (or ``.pth``), each a
``torch.save``'d float16 tensor.
"""
from __future__ import annotations

import collections
import os
from typing import Any, Sequence

import numpy as np

from ..utils.atomic import write_file_atomic
from ..utils.torch_checkpoint import load_torch_file
from .packing import MIN_LABEL_WIDTH, class_id_problem

LABEL_DTYPES = (np.float16, np.float32)
FLOAT16_EXACT_IDS = 2048  # float16 holds every integer up to 2048 exactly (float32: up to 2**24)
NPY_SUFFIX = ".npy"
TORCH_SUFFIXES = (".pt", ".pth")


def label_dtype(num_classes: int) -> np.dtype:
    """The dtype of label maps for ``num_classes`` classes: float16 when it holds every id exactly
    (up to 2049 classes: all existing and official label sets), else float32."""
    return np.dtype(np.float16 if num_classes <= FLOAT16_EXACT_IDS + 1 else np.float32)


def label_key(image_path: str, full_name: bool = False) -> str:
    """``<dir>/<stem>`` of an image path (stem: its file name up to the last dot), or with
    ``full_name`` ``<dir>/<file name>``: see :func:`label_keys` for which."""
    folder, name = os.path.split(image_path)
    return f"{os.path.basename(folder)}/{name if full_name else os.path.splitext(name)[0]}"


def shared_stems(image_paths: Sequence[str]) -> frozenset[int]:
    """Indices of the images whose ``<dir>/<stem>`` another image of the list shares (``a.b.JPEG``
    and ``a.b.png``): their labels are named by their full file names. Raises naming both images
    when two would still share a label (``<dir>`` is the directory's name, not its path)."""
    stems = [label_key(path) for path in image_paths]
    if len(set(stems)) == len(stems):  # the usual case, checked fast
        return frozenset()
    count = collections.Counter(stem for stem, _ in set(zip(stems, image_paths)))  # an image listed twice is one
    shared = frozenset(i for i, stem in enumerate(stems) if count[stem] > 1)
    owner: dict[str, str] = {}
    for i, path in enumerate(image_paths):
        key = label_key(path, full_name=True) if i in shared else stems[i]
        other = owner.setdefault(key, path)
        if other != path:
            raise ValueError(f"images {other} and {path} would share the token label {key}{NPY_SUFFIX}; "
                             f"rename one of them")
    return shared


def label_keys(image_paths: Sequence[str]) -> list[str]:
    """The key naming each image's label in every layout (generation, label files, packs):
    ``<dir>/<stem>``, or ``<dir>/<file name>`` for the :func:`shared_stems`, so no two images
    share a label. Keys depend on the whole list: read labels with the image list they were
    written for."""
    shared = shared_stems(image_paths)
    return [label_key(path, i in shared) for i, path in enumerate(image_paths)]


def label_paths(root: str, image_paths: Sequence[str]) -> list[str]:
    """``<root>/<key>.npy`` of each image (:func:`label_keys`)."""
    return [os.path.join(root, key + NPY_SUFFIX) for key in label_keys(image_paths)]


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


def is_complete_label(path: str, shape: Sequence[int], dtype: np.dtype | None = None) -> bool:
    """Whether ``path`` holds a complete label map of ``shape`` (and ``dtype`` when given): a finished write."""
    try:
        label = read_label_file(path, shape, mmap_mode="r")
    except ValueError:
        return False
    return dtype is None or label.dtype == dtype


def convert_label_file(src: str, dst: str, shape: Sequence[int]) -> bool:
    """Write the label map of PyTorch file ``src`` (which must have ``shape``) to ``dst`` as ``.npy``:
    float16, or float32 when float16 would round its ids (a float32 source with ids above 2048);
    False, doing nothing, when ``dst`` already holds one."""
    if is_complete_label(dst, shape):
        return False
    label = read_torch_label(src, shape)
    half = label.astype(np.float16)
    save_npy_atomic(half if np.array_equal(half[1], label[1], equal_nan=True) else label, dst)
    return True
