"""ImageNet-layout (or list-file) image dataset with optional per-image token-label maps."""
from __future__ import annotations

import logging
import os
import random
from typing import Any, Callable, Literal, Mapping, Sequence, get_args

import numpy as np

from ..token_labels.files import BadLabelError, check_label_map
from ..token_labels.packing import pack_label_sample
from ..token_labels.store import LABEL_FORMATS
from ..utils.registry import DATASETS, TRANSFORMS, ConfigError
from .faults import FaultLog
from .image_folder import BadImageError, read_class_list, read_list_file, read_rgb, scan_image_folder
from .transforms import FULL_CROP, to_chw_float

logger = logging.getLogger(__name__)

MissingLabelMode = BadLabelMode = Literal["error", "ground_truth"]
BadImageMode = Literal["error", "skip"]
LabelFormat = Literal["files", "packed"]  # the keys of token_labels.store.LABEL_FORMATS
MISSING_LABEL_MODES = get_args(MissingLabelMode)
BAD_LABEL_MODES = get_args(BadLabelMode)
BAD_IMAGE_MODES = get_args(BadImageMode)
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

    ``label_format`` ``files``: one ``<label_root>/<wnid>/<stem>.npy`` per image
    (``<wnid>/<file name>.npy`` for images sharing a stem: ``token_labels.files.label_keys``);
    ``packed``: ``label_root`` is a pack written by ``tools/pack_labels.py`` (memory-mapped
    shards). Both give the same samples for the same labels.

    ``__getitem__`` returns ``(image float32 [3, S, S], packed label float32 [3, k, H, W])``
    with labels (see ``token_labels.packing.pack_label_sample``), else ``(image, int64 class)``.
    Images the transforms leave as uint8 are returned as float32 in [0, 1].
    Augmentation draws from a ``random.Random`` seeded by (seed, epoch, index, copy), so samples do
    not depend on worker count or access order. The item is an index (copy 0) or, from a sampler doing
    repeated augmentation, an ``(index, copy)`` pair: each copy of an image gets its own augmentation.

    Bad inputs: ``missing_label`` (labels absent when the dataset is built) and ``bad_label``
    (unreadable or truncated files, wrong shape or dtype, non-finite logits, class ids that are NaN,
    fractional or outside ``[0, num_classes)``) are ``error`` (raise naming the file) or
    ``ground_truth`` (use :func:`fallback_label_map`). ``bad_image`` (an image that cannot be
    decoded) is ``error`` or ``skip``: the sample is the next decodable image (wrapping) with its
    own label, augmented with the requested item's stream, so every worker count and a resumed
    run give the same samples. Replacements are warned about once per file and, after
    :meth:`set_report_dir`, listed in that directory (see ``faults.read_fault_report``).
    """

    def __init__(self, root: str, label_root: str | None = None,
                 transforms: Sequence[Mapping[str, Any] | Callable] = (), list_file: str | None = None,
                 class_list: str | None = None, missing_label: MissingLabelMode = "error",
                 label_format: LabelFormat = "files", bad_label: BadLabelMode = "error",
                 bad_image: BadImageMode = "error", seed: int = 0):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"dataset root {root} does not exist")
        for key, value, modes in (("missing_label", missing_label, MISSING_LABEL_MODES),
                                  ("bad_label", bad_label, BAD_LABEL_MODES), ("bad_image", bad_image, BAD_IMAGE_MODES),
                                  ("label_format", label_format, tuple(LABEL_FORMATS))):
            if value not in modes:
                raise ConfigError(f"{key} must be one of {modes}, got {value!r}")
        self.root = root
        self.label_root = label_root
        self.missing_label = missing_label
        self.bad_label = bad_label
        self.bad_image = bad_image
        self.faults = FaultLog()
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

    def set_report_dir(self, report_dir: str) -> None:
        """List replaced images and labels in ``report_dir`` (call before creating the loader's iterator)."""
        self.faults.set_report_dir(report_dir)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        index, copy = item if isinstance(item, tuple) else (item, 0)
        source, img = self._decodable_image(index)
        target = self.samples[source][1]
        # copy 0 leaves the copy out of the key: runs without repeated augmentation keep their samples
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}" + (f"/{copy}" if copy else ""))
        sample = {"img": img}
        if self.label_root is not None:
            sample["label"] = self._load_label(source)
        for transform in self.transforms:
            sample = transform(sample, rng)
        img = sample["img"]
        if not (isinstance(img, np.ndarray) and img.dtype == np.float32):
            img = to_chw_float(img)
        if self.label_root is None:
            return img, np.int64(target)
        return img, pack_label_sample(sample["label"], sample.get("crop", FULL_CROP), target)

    def _decodable_image(self, index: int) -> tuple[int, np.ndarray]:
        """``(index, image)``, or with ``bad_image='skip'`` those of the next decodable sample (wrapping)."""
        for offset in range(len(self)):
            source = (index + offset) % len(self)
            try:
                return source, read_rgb(self.samples[source][0])
            except BadImageError as e:
                if self.bad_image == "error":
                    raise
                self.faults.record("skipped_images", self.samples[source][0], e.reason)
        raise ValueError(f"none of the {len(self)} images under {self.root} can be decoded")

    def _open_labels(self, label_format: str) -> None:
        """Open the label source; check which images have no label."""
        self.labels = LABEL_FORMATS[label_format](self.label_root, [path for path, _ in self.samples])
        self.missing_labels = self.labels.missing
        self.label_shape = self.labels.shape
        fallback = [key for key, mode in (("missing_label", self.missing_label), ("bad_label", self.bad_label))
                    if mode == "ground_truth"]
        if fallback and self.num_classes < self.label_shape[1]:
            raise ConfigError(f"{fallback[0]}='ground_truth' needs at least k={self.label_shape[1]} "
                              f"classes for distinct label ids, have {self.num_classes}")
        if not self.missing_labels:
            return
        if self.missing_label == "error":
            first = min(self.missing_labels)
            raise FileNotFoundError(
                f"no token label for image {self.samples[first][0]}: expected {self.labels.where(first)} "
                f"({len(self.missing_labels)} of {len(self)} images have none; missing_label='ground_truth' "
                f"substitutes the ground-truth class)")
        logger.warning("%d of %d images have no token label in %s; using their ground-truth class as the "
                       "label map", len(self.missing_labels), len(self), self.label_root)

    def _load_label(self, index: int) -> np.ndarray:
        """The checked ``[2, k, H, W]`` float32 label map of ``index``, or its fallback (``missing_label``,
        ``bad_label``)."""
        where = self.labels.where(index)
        if index in self.missing_labels:  # warned about, with their count, when the dataset was built
            self.faults.record("label_fallbacks", where, "missing", warn=False)
        else:
            try:
                label = check_label_map(self.labels.read(index), where, self.label_shape, self.num_classes)
                return label.astype(np.float32)
            except BadLabelError as e:
                if self.bad_label == "error":
                    raise
                self.faults.record("label_fallbacks", where, e.reason)
        return fallback_label_map(self.samples[index][1], self.num_classes, self.label_shape)
