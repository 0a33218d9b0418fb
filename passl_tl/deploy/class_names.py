"""Class names for predictions: a user file, the names stored at export, or the bundled ImageNet-1k names."""
from __future__ import annotations

import importlib.resources
import os
import re
from typing import Sequence

IMAGENET_FILE = "imagenet1k_classes.txt"  # 1000 lines "<wnid> <first WordNet lemma>", sorted by wnid
_WNID = re.compile(r"n\d{8}")


def read_class_names(path: str) -> list[str]:
    """Names from ``path``: lines ``<id> <name>`` (ids 0..n-1 in any order), ``<wnid> <name>`` (line
    order is the class order) or just ``<name>``; the keyed forms apply only when every line has one."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class names file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise ValueError(f"class names file {path} is empty")
    pairs = [line.split(None, 1) for line in lines]
    if any(len(p) != 2 for p in pairs):
        return lines
    keys = [key for key, _ in pairs]
    if all(key.isdigit() for key in keys):
        ids = [int(key) for key in keys]
        if sorted(ids) != list(range(len(ids))):
            raise ValueError(f"class names file {path}: numeric ids must be 0..{len(ids) - 1}, each once")
        return [name for _, name in sorted(zip(ids, (name for _, name in pairs)))]
    if all(_WNID.fullmatch(key) for key in keys):
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"class names file {path} repeats {', '.join(repeated)}")
        return [name for _, name in pairs]
    return lines


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k names in the standard (sorted wnid) class order, bundled with the package."""
    with importlib.resources.as_file(importlib.resources.files("passl_tl") / "data" / IMAGENET_FILE) as path:
        return read_class_names(str(path))


def resolve_class_names(num_classes: int, path: str | None = None,
                        stored: Sequence[str] | None = None) -> list[str] | None:
    """``path`` if given, else ``stored``, else ImageNet-1k for 1000 classes, else None (use the ids)."""
    if path is not None:
        names, source = read_class_names(path), f"class names file {path}"
    elif stored is not None:
        names, source = list(stored), "the stored class names"
    elif num_classes == 1000:
        return imagenet_class_names()
    else:
        return None
    if len(names) != num_classes:
        raise ValueError(f"{source} has {len(names)} names but the model has {num_classes} classes")
    return names
