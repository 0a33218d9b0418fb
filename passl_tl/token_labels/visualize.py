"""Pictures of token labels: the image beside its per-cell top class and confidence, and the same
after a sampled training crop/flip (the transforms and target builder training uses)."""
from __future__ import annotations

import colorsys
import os
import random
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..datasets.image_folder import read_rgb
from ..datasets.transforms import RandomHorizontalFlipWithLabel, RandomResizedCropWithCoords
from .files import TORCH_SUFFIXES, read_label_file, read_torch_label
from .packing import pack_label_sample
from .targets import make_token_targets

PANEL = 224        # panel height in pixels
MARGIN = 10
TITLE = 18         # title band above each panel
SWATCH = 14        # legend colour square
LEGEND_ROWS = 8    # entries per legend column
MAX_LEGEND = 24
COLUMN_TITLES = {"image": "image", "classes": "top class per cell", "confidence": "top-class probability"}
_GOLDEN = 0.618033988749895

Box = tuple[int, int, int, int]  # left, top, width, height


@dataclass
class View:
    """An image with its token labels: per-cell top class ids and confidence in [0, 1]."""

    image: np.ndarray       # HWC uint8 RGB
    classes: np.ndarray     # [h, w] int64
    confidence: np.ndarray  # [h, w] float
    title: str
    flipped: bool = False   # a training view mirrored from the original


@dataclass
class Figure:
    """The rendered picture and where each panel is (``"<view>/<image|classes|confidence>"``)."""

    image: Image.Image
    panels: dict[str, Box]
    legend: list[int]


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per class id (hues spaced by the golden ratio)."""
    hue = (class_id * _GOLDEN) % 1.0
    value = 0.95 if class_id % 2 == 0 else 0.75
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.75, value))


def read_label_map(path: str) -> np.ndarray:
    """A ``[2, k, H, W]`` token-label file as float32: ``.npy``, or an official ``.pt``/``.pth`` file."""
    torch_file = os.path.splitext(path)[1] in TORCH_SUFFIXES
    return (read_torch_label(path) if torch_file else read_label_file(path)).astype(np.float32)


def label_view(image: np.ndarray, label: np.ndarray, title: str) -> View:
    """The top-1 id of each cell and its softmax probability among the cell's top-k logits."""
    exps = np.exp(label[0] - label[0].max(axis=0))
    top = label[0].argmax(axis=0)[None]
    ids = np.take_along_axis(label[1], top, axis=0)[0].astype(np.int64)
    return View(image, ids, 1.0 / exps.sum(axis=0), title)


def training_view(image: np.ndarray, label: np.ndarray, seed: int, size: int = 224, label_size: int = 14,
                  scale: Sequence[float] = (0.08, 1.0)) -> View:
    """A training sample drawn with ``seed``: flip (p = 0.5) and random resized crop to ``size`` (the
    label transforms training uses), then the ``label_size``² token targets of that crop
    (``make_token_targets``, no smoothing) as top class and probability."""
    rng = random.Random(seed)
    flipped = rng.random() < 0.5
    sample = RandomHorizontalFlipWithLabel(prob=float(flipped))({"img": image, "label": label}, rng)
    sample = RandomResizedCropWithCoords(size, scale=scale)(sample, rng)
    packed = pack_label_sample(sample["label"], sample["crop"], gt=0)[None]
    targets = make_token_targets(packed, int(label[1].max()) + 1, label_size=label_size, smoothing=0.0)
    tokens = targets.numpy()[0, :, -label_size ** 2:]  # label_size 1: the cls column is the one token
    top, left, height, width = sample["crop"]
    title = (f"training view, seed {seed}: {'flip, ' if flipped else ''}crop t{top:.2f} l{left:.2f} h{height:.2f} "
             f"w{width:.2f} -> {label_size}x{label_size} token targets")
    grid = (label_size, label_size)
    return View(np.asarray(sample["img"]), tokens.argmax(axis=0).reshape(grid), tokens.max(axis=0).reshape(grid),
                title, flipped)


def render(views: Sequence[View], class_names: Sequence[str] | None = None) -> Figure:
    """One row per view under its title: the image, its top-class map and its confidence map, each under its
    column's title (:data:`COLUMN_TITLES`); a legend below."""
    font = ImageFont.load_default(size=12)
    sizes = [_panel_size(view.image) for view in views]
    row_width = max(3 * w + 4 * MARGIN for w, _ in sizes)
    legend = _legend_classes(views)
    legend_height = min(len(legend), LEGEND_ROWS) * (SWATCH + 4) + TITLE + MARGIN
    height = sum(h + 2 * TITLE + MARGIN for _, h in sizes) + MARGIN + legend_height
    canvas = Image.new("RGB", (row_width, height), "white")
    draw = ImageDraw.Draw(canvas)
    panels: dict[str, Box] = {}
    top = MARGIN
    for index, (view, (w, h)) in enumerate(zip(views, sizes)):
        draw.text((MARGIN, top), view.title, fill="black", font=font)
        pictures = {"image": Image.fromarray(view.image).resize((w, h), Image.BILINEAR),
                    "classes": _class_picture(view.classes, (w, h)),
                    "confidence": _heat_picture(view.confidence, (w, h))}
        for column, (name, picture) in enumerate(pictures.items()):
            box = (MARGIN + column * (w + MARGIN), top + 2 * TITLE, w, h)
            draw.text((box[0], top + TITLE), COLUMN_TITLES[name], fill="black", font=font)
            canvas.paste(picture, box[:2])
            panels[f"{index}/{name}"] = box
        top += 2 * TITLE + h + MARGIN
    _draw_legend(canvas, legend, class_names, top, font)
    return Figure(canvas, panels, legend)


def visualize_token_labels(image_path: str, label_path: str, class_names: Sequence[str] | None = None,
                           crop: bool = False, seed: int = 0, size: int = 224, label_size: int = 14,
                           scale: Sequence[float] = (0.08, 1.0)) -> Figure:
    """The figure of an image and its ``[2, k, H, W]`` label file; with ``crop`` also the
    ``training_view`` drawn with ``seed`` (crop ``size``, token grid ``label_size``, area ``scale``)."""
    image, label = read_rgb(image_path), read_label_map(label_path)
    if class_names is not None and label[1].max() >= len(class_names):
        raise ValueError(f"{label_path} has class id {int(label[1].max())} but only {len(class_names)} "
                         f"class names were given")
    grid = f"{label.shape[2]}x{label.shape[3]}"
    views = [label_view(image, label, f"full image, {grid} label map (top-{label.shape[1]} softmax)")]
    if crop:
        views.append(training_view(image, label, seed, size, label_size, scale))
    return render(views, class_names)


def _panel_size(image: np.ndarray) -> tuple[int, int]:
    h, w = image.shape[:2]
    return max(1, round(PANEL * w / h)), PANEL


def _class_picture(classes: np.ndarray, size: tuple[int, int]) -> Image.Image:
    palette = np.array([class_colour(int(c)) for c in range(int(classes.max()) + 1)], dtype=np.uint8)
    return Image.fromarray(palette[classes]).resize(size, Image.NEAREST)


def _heat_picture(confidence: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Confidence in [0, 1] through OpenCV's inferno colour map (dark: low, yellow: high)."""
    levels = np.clip(np.rint(confidence * 255), 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    return Image.fromarray(rgb).resize(size, Image.NEAREST)


def _legend_classes(views: Sequence[View]) -> list[int]:
    """Class ids of the class maps, most cells first (over all views), at most ``MAX_LEGEND``."""
    ids, counts = np.unique(np.concatenate([v.classes.ravel() for v in views]), return_counts=True)
    return [int(ids[i]) for i in np.argsort(-counts, kind="stable")[:MAX_LEGEND]]


def _draw_legend(canvas: Image.Image, legend: Sequence[int], class_names: Sequence[str] | None, top: int,
                 font: ImageFont.ImageFont) -> None:
    """Colour bar of the confidence maps, then a swatch and ``id name`` per class in columns."""
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, top), "confidence 0", fill="black", font=font)
    bar_left = MARGIN + int(draw.textlength("confidence 0 ", font=font))
    canvas.paste(_heat_picture(np.linspace(0.0, 1.0, 256)[None], (128, 12)), (bar_left, top + 1))
    draw.text((bar_left + 132, top), "1      top class, most cells first:", fill="black", font=font)
    columns = max(1, -(-len(legend) // LEGEND_ROWS))
    column_width = (canvas.width - MARGIN) // columns
    for n, class_id in enumerate(legend):
        left = MARGIN + (n // LEGEND_ROWS) * column_width
        y = top + TITLE + (n % LEGEND_ROWS) * (SWATCH + 4)
        draw.rectangle((left, y, left + SWATCH, y + SWATCH), fill=class_colour(class_id), outline="black")
        name = f"{class_id} {class_names[class_id]}" if class_names is not None else str(class_id)
        draw.text((left + SWATCH + 4, y), name, fill="black", font=font)
