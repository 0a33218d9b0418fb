"""Finding images: ImageNet folder layout, PaddleClas list files, class lists, decoding."""
from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np

IMG_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp")
Samples = list[tuple[str, int]]


def read_class_list(path: str) -> list[str]:
    """Class wnids, one per line (the first word; the rest, e.g. a readable name, is ignored)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class list {path} does not exist")
    with open(path, encoding="utf-8") as f:
        wnids = [line.split()[0] for line in f if line.strip()]
    if not wnids:
        raise ValueError(f"class list {path} is empty")
    duplicates = sorted({w for w in wnids if wnids.count(w) > 1})
    if duplicates:
        raise ValueError(f"class list {path} repeats {', '.join(duplicates)}")
    return wnids


def _is_class_dir(path: str) -> bool:
    """A visible directory holding at least one image (skips ``.ipynb_checkpoints``, ``lost+found``...)."""
    name = os.path.basename(path)
    return (os.path.isdir(path) and not name.startswith(".")
            and any(f.lower().endswith(IMG_EXTENSIONS) for f in os.listdir(path)))


def scan_image_folder(root: str, classes: Sequence[str] | None = None) -> tuple[Samples, list[str]]:
    """Samples of ``<root>/<wnid>/<image>`` and the class names (sorted subdirs unless ``classes``)."""
    subdirs = sorted(d for d in os.listdir(root) if _is_class_dir(os.path.join(root, d)))
    if classes is None:
        classes = subdirs
    index = {wnid: i for i, wnid in enumerate(classes)}
    unknown = [d for d in subdirs if d not in index]
    if unknown:
        raise ValueError(f"{root} has class directories not in the class list: {', '.join(unknown[:5])}")
    samples = []
    for wnid in subdirs:
        folder = os.path.join(root, wnid)
        samples += [(os.path.join(folder, f), index[wnid]) for f in sorted(os.listdir(folder))
                    if f.lower().endswith(IMG_EXTENSIONS)]
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) found in the class "
                                f"subdirectories of {root}")
    return samples, list(classes)


def read_list_file(root: str, list_file: str, classes: Sequence[str] | None = None) -> tuple[Samples, list[str]]:
    """Samples of a ``<path relative to root> <int label>`` list and the class names.

    Without ``classes`` the names are the images' directory names when labels and directories
    correspond one to one, else the label numbers as strings.
    """
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"list file {list_file} does not exist")
    samples = []
    with open(list_file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{list_file}:{line_no}: expected '<relative path> <int label>', "
                                 f"got {line.strip()!r}")
            samples.append((os.path.join(root, parts[0].strip()), int(parts[1])))
    if not samples:
        raise ValueError(f"list file {list_file} lists no images")
    labels = [label for _, label in samples]
    num_classes = len(classes) if classes is not None else max(labels) + 1
    if min(labels) < 0 or max(labels) >= num_classes:
        raise ValueError(f"{list_file}: labels span [{min(labels)}, {max(labels)}], outside "
                         f"[0, {num_classes}) given {num_classes} classes")
    if classes is None:
        dirs = {(label, os.path.basename(os.path.dirname(path))) for path, label in samples}
        names = dict(dirs)
        one_to_one = len(dirs) == len(names) == len(set(names.values())) == num_classes
        classes = [names[i] if one_to_one else str(i) for i in range(num_classes)]
    return samples, list(classes)


class BadImageError(ValueError):
    """An image file that cannot be decoded; ``reason`` says what is wrong, for reports. One-argument
    construction works too (a DataLoader worker's error is re-raised in the main process that way)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


def _bad_image(path: str, reason: str) -> BadImageError:
    return BadImageError(f"cannot decode image {path}: {reason}", reason)


def read_rgb(path: str) -> np.ndarray:
    """Decode an image file to HWC uint8 RGB with OpenCV, as Pillow's ``convert("RGB")`` does.

    Grayscale gives three equal channels; alpha (RGBA, gray + alpha, palette transparency) is
    dropped, not composited; 16-bit images keep their high byte (Pillow clips 16-bit grayscale at
    255 instead); CMYK JPEGs, Adobe-inverted or not, are converted within 2 of Pillow (OpenCV
    divides by 256 where Pillow divides by 255). A file that cannot be read or decoded (empty,
    truncated, corrupt, not an image) raises :class:`BadImageError`.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise _bad_image(path, f"unreadable ({e.strerror or e})") from e
    if not data.size:
        raise _bad_image(path, "empty file (0 bytes)")
    # PIL (used by timm and the label annotator) ignores EXIF orientation: so do we
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise _bad_image(path, f"OpenCV cannot decode its {data.size} bytes (truncated, corrupt or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
