"""Where a dataset's token labels come from: per-image ``.npy`` files or a pack of shards.

Both sources are built for a dataset's list of image paths and answer by sample index:
``missing`` (indices without a label), ``shape`` (``[2, k, H, W]`` of every label),
``where(index)`` (the label's expected location, for messages) and ``read(index)``.
Building one raises when none of the images has a label.
"""
from __future__ import annotations

import collections
import itertools
import os
from typing import Any, Sequence

import numpy as np

from .files import NPY_SUFFIX, BadLabelError, label_key, read_label_file, shared_stems
from .pack import INDEX_NAME, open_shard, read_pack_index

SHAPE_VOTERS = 5  # label files read to find the common label shape


class _LabelSource:
    """A label source's ``root`` and ``images``; an image's label key (``files.label_keys``) is computed
    when asked (a list of keys would add a string per image to every loader worker)."""

    def __init__(self, root: str, images: Sequence[str]):
        self.root, self.images = root, images
        self._full_names = shared_stems(images)  # usually empty

    def key(self, index: int) -> str:
        return label_key(self.images[index], index in self._full_names)


class FileLabels(_LabelSource):
    """Labels stored as ``<root>/<key>.npy``; each directory is listed once to find missing files."""

    def __init__(self, root: str, images: Sequence[str]):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"label_root {root} does not exist")
        super().__init__(root, images)
        listed: dict[str, set[str]] = {}
        missing = []
        for index in range(len(images)):
            folder, name = os.path.split(self.where(index))
            if folder not in listed:
                listed[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            if name not in listed[folder]:
                missing.append(index)
        self.missing = frozenset(missing)
        present = list(itertools.islice((i for i in range(len(images)) if i not in self.missing), SHAPE_VOTERS))
        if not present:
            raise FileNotFoundError(f"none of the {len(images)} images has a token-label file under {root}")
        self.shape = self._common_shape(present)

    def _common_shape(self, indices: Sequence[int]) -> tuple[int, ...]:
        """The most common shape of these labels' readable files: one bad file does not set the shape."""
        shapes: collections.Counter = collections.Counter()
        errors = []
        for index in indices:
            try:
                shapes[read_label_file(self.where(index), mmap_mode="r").shape] += 1
            except BadLabelError as e:
                errors.append(str(e))
        if not shapes:
            raise ValueError(f"none of the first {len(indices)} token-label files is usable: {'; '.join(errors)}")
        return shapes.most_common(1)[0][0]

    def where(self, index: int) -> str:
        return os.path.join(self.root, self.key(index) + NPY_SUFFIX)

    def read(self, index: int) -> np.ndarray:
        return read_label_file(self.where(index), self.shape)


class PackedLabels(_LabelSource):
    """Labels of a pack (``pack``); shards are memory-mapped on first use in the reading process
    (a DataLoader worker maps its own) and left out when the object is pickled."""

    def __init__(self, root: str, images: Sequence[str]):
        index = read_pack_index(root)
        super().__init__(root, images)
        self.shape, self.dtype, self.shard_files = index.shape, index.dtype, index.shard_files()
        where = index.locations()
        found = [where.get(self.key(i), (-1, -1)) for i in range(len(images))]
        self._shard_of = np.array([shard for shard, _ in found], dtype=np.int32)
        self._row_of = np.array([row for _, row in found], dtype=np.int64)
        self.missing = frozenset(np.flatnonzero(self._shard_of < 0).tolist())
        if len(self.missing) == len(images):
            raise FileNotFoundError(f"none of the {len(images)} images has a token label in the pack {root} "
                                    f"(keys like {self.key(0)!r})")
        self._shards: dict[int, np.ndarray] = {}

    def where(self, index: int) -> str:
        return f"{self.key(index)} in {os.path.join(self.root, INDEX_NAME)}"

    def read(self, index: int) -> np.ndarray:
        shard = int(self._shard_of[index])
        if shard < 0:
            raise FileNotFoundError(f"no token label for image {self.images[index]}: expected {self.where(index)}")
        if shard not in self._shards:
            self._shards[shard] = open_shard(*self.shard_files[shard], self.shape, self.dtype)
        return np.asarray(self._shards[shard][self._row_of[index]])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_shards": {}}


LABEL_FORMATS = {"files": FileLabels, "packed": PackedLabels}
