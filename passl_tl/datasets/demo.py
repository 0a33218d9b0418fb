"""Synthetic demo data in the ImageNet + top-5 token-label layout, learnable on a CPU.

Each class is a coloured stripe texture (its own hue, orientation and period). An image is
mostly its class's texture with one or two rectangles of other classes' textures; the
ground truth is the majority class and the 18x18 label map gives, per cell, the class that
covers most of the cell as top-1, with noisy logits for the next four.
"""
from __future__ import annotations

import colorsys
import json
import os
from typing import Any, Callable, Literal, Mapping, Sequence

import cv2
import numpy as np

from ..utils.atomic import write_directory_atomic
from ..utils.logger import get_logger
from ..utils.registry import DATASETS, NonNegativeInt, PositiveInt
from .imagenet_token_label import BadImageMode, BadLabelMode, ImageNetTokenLabel

TOP_K = 5
LABEL_HW = 18
MARKER = "demo.json"
_HUE_NAMES = ("red", "orange", "yellow", "chartreuse", "green", "spring", "cyan", "azure",
              "blue", "violet", "magenta", "rose")
_SPLIT_CODES = {"train": 0, "val": 1}


def wnid(k: int) -> str:
    """ImageNet-like directory name of class ``k``."""
    return f"n{k:08d}"


def class_style(k: int, num_classes: int) -> tuple[np.ndarray, float, float]:
    """(RGB colour in [0, 255], stripe angle in degrees, stripe period in pixels) of class ``k``."""
    rgb = np.array(colorsys.hsv_to_rgb(k / num_classes, 0.85, 1.0), dtype=np.float32) * 255.0
    return rgb, (k * 67.5) % 180.0, 5.0 + 2.0 * (k % 3)


def class_name(k: int, num_classes: int) -> str:
    """What class ``k`` shows, e.g. ``red_stripes_0deg``: its hue's name and stripe angle. With more classes than
    hue names two classes can share both, so the class's number follows."""
    _, angle, _ = class_style(k, num_classes)
    hue = _HUE_NAMES[round(k / num_classes * len(_HUE_NAMES)) % len(_HUE_NAMES)]
    return f"{hue}_stripes_{angle:g}deg" + (f"_{k}" if num_classes > len(_HUE_NAMES) else "")


def class_layout(gt: int, num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``[size, size]`` class-id mask: ``gt`` everywhere but one or two rectangles of other classes.

    Rectangle sides are at most 0.45 of the image, so ``gt`` always covers more than half of it.
    """
    mask = np.full((size, size), gt, dtype=np.int64)
    others = [c for c in range(num_classes) if c != gt]
    for _ in range(rng.integers(1, 3)):
        h, w = rng.integers(round(0.25 * size), int(0.45 * size) + 1, size=2)
        top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        mask[top:top + h, left:left + w] = rng.choice(others)
    return mask


def render_image(mask: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """HWC uint8 RGB image painting every pixel with the texture of its class in ``mask``."""
    size = mask.shape[0]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((size, size, 3), dtype=np.float32)
    for k in np.unique(mask):
        rgb, angle, period = class_style(int(k), num_classes)
        theta = np.deg2rad(angle)
        wave = np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period + rng.uniform(0, 2 * np.pi))
        texture = (0.775 + 0.225 * wave)[..., None] * rgb
        img[mask == k] = texture[mask == k]
    img = img * rng.uniform(0.85, 1.1) + rng.normal(0.0, 6.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def cell_fractions(mask: np.ndarray, num_classes: int, cells: int = LABEL_HW) -> np.ndarray:
    """``[C, cells, cells]``: the fraction of each label cell covered by each class."""
    size = mask.shape[0]
    edges = np.arange(cells + 1) * size / cells
    pixels = np.arange(size)
    overlap = (np.minimum(pixels[None] + 1, edges[1:, None]) - np.maximum(pixels[None], edges[:-1, None]))
    weights = np.clip(overlap, 0, None) * cells / size  # [cells, size], rows sum to 1
    onehot = (mask[None] == np.arange(num_classes)[:, None, None]).astype(np.float64)
    return weights @ onehot @ weights.T


def token_label_map(fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[2, 5, H, W]`` float16 (top-5 logits descending, class ids) with the majority class as top-1."""
    scores = 1.5 + 9.0 * fractions + rng.normal(0.0, 0.6, fractions.shape)
    top = fractions.argmax(axis=0)[None]
    runner_up = np.where(np.arange(len(fractions))[:, None, None] == top, -np.inf, scores).max(axis=0)
    top_score = np.maximum(np.take_along_axis(scores, top, axis=0), runner_up + 0.3)
    np.put_along_axis(scores, top, top_score, axis=0)
    ids = np.argsort(-scores, axis=0, kind="stable")[:TOP_K]
    return np.stack([np.take_along_axis(scores, ids, axis=0), ids]).astype(np.float16)


def _samples(num_classes: int, train_per_class: int, val_per_class: int):
    """(split, class, n) of every demo image; val numbering continues after train."""
    for k in range(num_classes):
        for n in range(train_per_class + val_per_class):
            yield ("train" if n < train_per_class else "val"), k, n


def _paths(out_dir: str, split: str, k: int, n: int) -> tuple[str, str | None]:
    """Image path and (train only) token-label path of one demo image."""
    stem = f"{wnid(k)}_{n:04d}"
    image = os.path.join(out_dir, split, wnid(k), stem + ".JPEG")
    label = os.path.join(out_dir, "label_top5_train", wnid(k), stem + ".npy") if split == "train" else None
    return image, label


def _write_sample(out_dir: str, split: str, k: int, n: int, num_classes: int, image_size: int,
                  seed: int) -> None:
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], k, n])
    mask = class_layout(k, num_classes, image_size, rng)
    image_path, label_path = _paths(out_dir, split, k, n)
    os.makedirs(os.path.dirname(image_path), exist_ok=True)
    bgr = cv2.cvtColor(render_image(mask, num_classes, rng), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(image_path, bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"cannot write {image_path}")
    if label_path is not None:
        os.makedirs(os.path.dirname(label_path), exist_ok=True)
        np.save(label_path, token_label_map(cell_fractions(mask, num_classes), rng))


def _is_complete(out_dir: str, params: dict) -> bool:
    marker = os.path.join(out_dir, MARKER)
    if not os.path.exists(marker):
        return False
    with open(marker, encoding="utf-8") as f:
        made_with = json.load(f)
    if made_with != params:
        raise ValueError(f"{out_dir} holds demo data made with {made_with}, not {params}; "
                         f"delete it or choose another directory")
    samples = _samples(params["num_classes"], params["train_per_class"], params["val_per_class"])
    paths = [p for split, k, n in samples for p in _paths(out_dir, split, k, n) if p is not None]
    return all(os.path.exists(p) for p in paths + [os.path.join(out_dir, "classes.txt")])


def make_demo_dataset(out_dir: str, num_classes: int = 10, train_per_class: int = 60, val_per_class: int = 20,
                      image_size: int = 64, seed: int = 0) -> str:
    """Write the demo dataset under ``out_dir`` (nothing to do when it is already complete).

    Layout: ``train/<wnid>/<wnid>_<n>.JPEG``, ``val/<wnid>/<wnid>_<n>.JPEG`` (n continues after the
    train images), ``label_top5_train/<wnid>/<stem>.npy`` and ``classes.txt`` (``<wnid> <name>``);
    ``demo.json`` (the parameters) is written last and marks the data complete. Returns ``out_dir``.
    """
    if num_classes < TOP_K:
        raise ValueError(f"the demo needs num_classes >= {TOP_K} for distinct top-{TOP_K} ids, "
                         f"got {num_classes}")
    if image_size < LABEL_HW:
        raise ValueError(f"image_size must be >= {LABEL_HW}, got {image_size}")
    params = dict(num_classes=num_classes, train_per_class=train_per_class, val_per_class=val_per_class,
                  image_size=image_size, seed=seed)
    if _is_complete(out_dir, params):
        return out_dir
    for split, k, n in _samples(num_classes, train_per_class, val_per_class):
        _write_sample(out_dir, split, k, n, num_classes, image_size, seed)
    with open(os.path.join(out_dir, "classes.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{wnid(k)} {class_name(k, num_classes)}\n" for k in range(num_classes))
    with open(os.path.join(out_dir, MARKER), "w", encoding="utf-8") as f:
        json.dump(params, f)
    return out_dir


def ensure_demo_dataset(root: str, **params) -> str:
    """``make_demo_dataset(root)``, safe when several processes call it at once.

    A missing dataset is written to a private temporary directory that is then renamed to
    ``root`` in one step; whichever process renames first wins and the others discard theirs.
    """
    if os.path.isdir(root):
        return make_demo_dataset(root, **params)  # complete: a no-op; interrupted earlier: refilled
    get_logger().info(f"writing the demo data to {root} (on first use only)")
    write_directory_atomic(root, lambda tmp: make_demo_dataset(tmp, **params), keep_existing=True)
    return make_demo_dataset(root, **params)


@DATASETS.register
def DemoTokenLabel(root: str = "data/demo", split: Literal["train", "val"] = "train",
                   transforms: Sequence[Mapping[str, Any] | Callable] = (), num_classes: PositiveInt = 10,
                   train_per_class: PositiveInt = 60, val_per_class: PositiveInt = 20, image_size: PositiveInt = 64,
                   data_seed: NonNegativeInt = 0, bad_image: BadImageMode = "error", bad_label: BadLabelMode = "error",
                   seed: int = 0) -> ImageNetTokenLabel:
    """The demo data as an :class:`ImageNetTokenLabel` split, written first if it is missing
    (``bad_image``, ``bad_label``: that class's policies)."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"DemoTokenLabel split must be one of {sorted(_SPLIT_CODES)}, got '{split}'")
    ensure_demo_dataset(root, num_classes=num_classes, train_per_class=train_per_class,
                        val_per_class=val_per_class, image_size=image_size, seed=data_seed)
    return ImageNetTokenLabel(os.path.join(root, split),
                              label_root=os.path.join(root, "label_top5_train") if split == "train" else None,
                              transforms=transforms, class_list=os.path.join(root, "classes.txt"),
                              bad_label=bad_label, bad_image=bad_image, seed=seed)
