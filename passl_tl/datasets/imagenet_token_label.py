"""ImageNet-layout (or list-file) image dataset with optional per-image token-label maps."""
from __future__ import annotations

import logging
import os
import random
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..utils.registry import DATASETS, TRANSFORMS, ConfigError
from .image_folder import read_class_list, read_list_file, read_rgb, scan_image_folder
from .label_store import LABEL_FORMATS
from .token_label import check_class_ids, pack_label_sample
from .transforms import FULL_CROP, to_chw_float

logger = logging.getLogger(__name__)

MISSING_LABEL_MODES = ("error", "ground_truth")
# Fallback label map: the ground truth as top-1 everywhere, the other slots negligible.
FALLBACK_TOP_LOGIT = 20.0
FALLBACK_OTHER_LOGIT = -20.0


def fallback_label_map(gt: int, num_classes: int, shape: Sequence[int]) -> np.ndarray:
    """A ``[2, k, H, W]`` map with ``gt`` as top-1 in every cell and distinct negligible other slots."""
    _, k, h, w = shape
    logits = np.full(k, FALLBACK_OTHER_LOGIT, dtype=np.float32)
    logits[0] = FALLBACK_TOP_LOGIT
    ids = (gt + np.arange(k)) % num_classes
    planes = np.stack([logits, ids.astype(np.float32)])
    return np.ascontiguousarray(np.broadcast_to(planes[:, :, None, None], (2, k, h, w)))


def build_transforms(specs: Sequence[Mapping[str, Any] | Callable], where: str) -> list[Callable]:
    """Build config mappings through ``TRANSFORMS``; already built callables are kept."""
    built = []
    for i, spec in enumerate(specs):
        if isinstance(spec, Mapping):
            built.append(TRANSFORMS.build(spec, where=f"{where} transforms[{i}]"))
        elif callable(spec):
            built.append(spec)
        else:
            raise ConfigError(f"{where} transforms[{i}] must be a mapping with 'name' or a callable, "
                              f"got {spec!r}")
    return built


@DATASETS.register
class ImageNetTokenLabel:
    """Images of one split, with token labels when ``label_root`` is set.

    ``label_format`` ``files``: one ``<label_root>/<wnid>/<stem>.npy`` per image; ``packed``:
    ``label_root`` is a pack written by ``tools/pack_labels.py`` (memory-mapped shards). Both
    give the same samples for the same labels.

    ``__getitem__`` returns ``(image float32 [3, S, S], packed label float32 [3, k, H, W])``
    with labels (see ``token_label.pack_label_sample``), else ``(image, int64 class)``.
    Images the transforms leave as uint8 are returned as float32 in [0, 1].
    Augmentation draws from a ``random.Random`` seeded by (seed, epoch, index).
    """

    def __init__(self, root: str, label_root: str | None = None,
                 transforms: Sequence[Mapping[str, Any] | Callable] = (), list_file: str | None = None,
                 class_list: str | None = None, missing_label: str = "error", label_format: str = "files",
                 seed: int = 0):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"dataset root {root} does not exist")
        if missing_label not in MISSING_LABEL_MODES:
            raise ConfigError(f"missing_label must be one of {MISSING_LABEL_MODES}, got {missing_label!r}")
        if label_format not in LABEL_FORMATS:
            raise ConfigError(f"label_format must be one of {tuple(LABEL_FORMATS)}, got {label_format!r}")
        self.root = root
        self.label_root = label_root
        self.missing_label = missing_label
        self.seed = seed
        self.epoch = 0
        self.transforms = build_transforms(transforms, f"dataset {type(self).__name__} ({root})")
        wnids = read_class_list(class_list) if class_list else None
        if list_file:
            self.samples, self.classes = read_list_file(root, list_file, wnids)
        else:
            self.samples, self.classes = scan_image_folder(root, wnids)
        self.num_classes = len(self.classes)
        self.missing_labels: frozenset[int] = frozenset()
        if label_root is not None:
            self._open_labels(label_format)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_missing_labels(self) -> int:
        return len(self.missing_labels)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before iterating each epoch)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        path, target = self.samples[index]
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}")
        sample = {"img": read_rgb(path)}
        if self.label_root is not None:
            sample["label"] = self._load_label(index)
        for transform in self.transforms:
            sample = transform(sample, rng)
        img = sample["img"]
        if not (isinstance(img, np.ndarray) and img.dtype == np.float32):
            img = to_chw_float(img)
        if self.label_root is None:
            return img, np.int64(target)
        return img, pack_label_sample(sample["label"], sample.get("crop", FULL_CROP), target)

    def _open_labels(self, label_format: str) -> None:
        """Open the label source; check which images have no label."""
        self.labels = LABEL_FORMATS[label_format](self.label_root, [path for path, _ in self.samples])
        self.missing_labels = self.labels.missing
        self.label_shape = self.labels.shape
        if not self.missing_labels:
            return
        if self.missing_label == "error":
            first = min(self.missing_labels)
            raise FileNotFoundError(
                f"no token label for image {self.samples[first][0]}: expected {self.labels.where(first)} "
                f"({len(self.missing_labels)} of {len(self)} images have none; missing_label='ground_truth' "
                f"substitutes the ground-truth class)")
        if self.num_classes < self.label_shape[1]:
            raise ValueError(f"missing_label='ground_truth' needs at least k={self.label_shape[1]} "
                             f"classes for distinct label ids, have {self.num_classes}")
        logger.warning("%d of %d images have no token label in %s; using their ground-truth class as the "
                       "label map", len(self.missing_labels), len(self), self.label_root)

    def _load_label(self, index: int) -> np.ndarray:
        if index in self.missing_labels:
            return fallback_label_map(self.samples[index][1], self.num_classes, self.label_shape)
        label = self.labels.read(index).astype(np.float32)
        check_class_ids(label[1], self.samples[index][1], self.num_classes,
                        f"token label {self.labels.where(index)}")
        return label
