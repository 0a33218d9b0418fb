"""ImageNet-layout (or list-file) image dataset with optional per-image token-label maps."""
from __future__ import annotations

import logging
import os
import random
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..utils.registry import DATASETS, TRANSFORMS, ConfigError
from .image_folder import read_class_list, read_list_file, read_rgb, scan_image_folder
from .token_label import MIN_LABEL_WIDTH, check_class_ids, pack_label_sample
from .transforms import FULL_CROP, to_chw_float

logger = logging.getLogger(__name__)

LABEL_DTYPES = (np.float16, np.float32)
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
    """Images of one split, with token labels ``<label_root>/<wnid>/<stem>.npy`` when ``label_root`` is set.

    ``__getitem__`` returns ``(image float32 [3, S, S], packed label float32 [3, k, H, W])``
    with labels (see ``token_label.pack_label_sample``), else ``(image, int64 class)``.
    Images the transforms leave as uint8 are returned as float32 in [0, 1].
    Augmentation draws from a ``random.Random`` seeded by (seed, epoch, index).
    """

    def __init__(self, root: str, label_root: str | None = None,
                 transforms: Sequence[Mapping[str, Any] | Callable] = (), list_file: str | None = None,
                 class_list: str | None = None, missing_label: str = "error", seed: int = 0):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"dataset root {root} does not exist")
        if missing_label not in MISSING_LABEL_MODES:
            raise ConfigError(f"missing_label must be one of {MISSING_LABEL_MODES}, got {missing_label!r}")
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
            self._index_labels()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_missing_labels(self) -> int:
        return len(self.missing_labels)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before iterating each epoch)."""
        self.epoch = epoch

    def label_path(self, index: int) -> str:
        """Expected token-label file of sample ``index``: ``<label_root>/<image dir>/<stem>.npy``."""
        path = self.samples[index][0]
        stem = os.path.splitext(os.path.basename(path))[0]
        return os.path.join(self.label_root, os.path.basename(os.path.dirname(path)), stem + ".npy")

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

    def _index_labels(self) -> None:
        """List the label directories once: find missing files and the common label shape."""
        if not os.path.isdir(self.label_root):
            raise FileNotFoundError(f"label_root {self.label_root} does not exist")
        listed: dict[str, set[str]] = {}
        missing = []
        for index in range(len(self.samples)):
            folder, name = os.path.split(self.label_path(index))
            if folder not in listed:
                listed[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            if name not in listed[folder]:
                missing.append(index)
        self.missing_labels = frozenset(missing)
        if missing and self.missing_label == "error":
            first = missing[0]
            raise FileNotFoundError(
                f"no token-label file for image {self.samples[first][0]}: expected {self.label_path(first)} "
                f"({len(missing)} of {len(self)} images have none; missing_label='ground_truth' "
                f"substitutes the ground-truth class)")
        present = next((i for i in range(len(self)) if i not in self.missing_labels), None)
        if present is None:
            raise FileNotFoundError(f"none of the {len(self)} images of {self.root} has a token-label "
                                    f"file under {self.label_root}")
        self.label_shape = self._read_label_file(self.label_path(present), expected_shape=None).shape
        if missing:
            if self.num_classes < self.label_shape[1]:
                raise ValueError(f"missing_label='ground_truth' needs at least k={self.label_shape[1]} "
                                 f"classes for distinct label ids, have {self.num_classes}")
            logger.warning("%d of %d images have no token-label file under %s; using their ground-truth "
                           "class as the label map", len(missing), len(self), self.label_root)

    def _load_label(self, index: int) -> np.ndarray:
        if index in self.missing_labels:
            return fallback_label_map(self.samples[index][1], self.num_classes, self.label_shape)
        path = self.label_path(index)
        label = self._read_label_file(path, self.label_shape).astype(np.float32)
        check_class_ids(label[1], self.samples[index][1], self.num_classes, f"token-label file {path}")
        return label

    @staticmethod
    def _read_label_file(path: str, expected_shape: Sequence[int] | None) -> np.ndarray:
        try:
            label = np.load(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read token-label file {path}: {e}") from e
        shape = tuple(label.shape)
        valid = (label.dtype in LABEL_DTYPES and len(shape) == 4 and shape[0] == 2
                 and shape[3] >= MIN_LABEL_WIDTH)
        if not valid or (expected_shape is not None and shape != tuple(expected_shape)):
            wanted = (list(expected_shape) if expected_shape is not None
                      else f"[2, k, H, W] with W >= {MIN_LABEL_WIDTH}")
            raise ValueError(f"token-label file {path} has shape {list(shape)} dtype {label.dtype}; "
                             f"expected {wanted} float16/float32")
        return label
