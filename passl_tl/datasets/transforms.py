"""Per-sample image transforms that keep a token-label map and its crop record consistent.

Every transform is called as ``t(sample, rng) -> sample`` with ``rng`` a ``random.Random``.
``sample`` holds ``"img"`` (HWC uint8 RGB ndarray or PIL image), optionally ``"label"``
(``[2, k, H, W]`` float32 token-label map of the current image orientation) and ``"crop"``
((top, left, height, width) fractions: the region of that label map the image shows).
Geometric resampling uses PIL so the filters match timm's PIL pipeline.
"""
from __future__ import annotations

import math
import random
from typing import Annotated, Any, Literal, Sequence, Union

import numpy as np
from PIL import Image

from ..utils.registry import TRANSFORMS, NonNegativeFloat, PositiveFloat, PositiveInt, Probability, Range

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FULL_CROP = (0.0, 0.0, 1.0, 1.0)

_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
_RANDOM_FILTERS = (Image.BILINEAR, Image.BICUBIC)

Sample = dict[str, Any]
Crop = tuple[float, float, float, float]
Interpolation = Literal["bilinear", "bicubic"]
RandomInterpolation = Literal["bilinear", "bicubic", "random"]  # random: bilinear or bicubic per draw
ImageSize = Union[PositiveInt, tuple[PositiveInt, PositiveInt]]  # one side, or (height, width)
Channels = tuple[float, float, float]  # a value per RGB channel


def to_chw_float(img: np.ndarray | Image.Image) -> np.ndarray:
    """HWC uint8 RGB image -> float32 ``[3, H, W]`` in [0, 1] (torchvision ``ToTensor``)."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise TypeError(f"expected an HWC uint8 RGB image, got dtype {arr.dtype} shape {list(arr.shape)}")
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def compose_crops(outer: Sequence[float], inner: Sequence[float]) -> Crop:
    """The crop ``inner`` (fractions of the ``outer`` crop) as fractions of the full image."""
    top, left, height, width = outer
    i, j, h, w = inner
    return (top + i * height, left + j * width, h * height, w * width)


def as_pil(img: np.ndarray | Image.Image) -> Image.Image:
    return img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))


def draw_filter(filters: tuple[int, ...], rng: random.Random) -> int:
    """One PIL resampling filter; a random draw only when there is a choice (``interpolation="random"``)."""
    return rng.choice(filters) if len(filters) > 1 else filters[0]


def resample_filters(interpolation: str, allow_random: bool) -> tuple[int, ...]:
    if interpolation == "random" and allow_random:
        return _RANDOM_FILTERS
    if interpolation not in _FILTERS:
        choices = sorted(_FILTERS) + (["random"] if allow_random else [])
        raise ValueError(f"interpolation must be one of {choices}, got {interpolation!r}")
    return (_FILTERS[interpolation],)


def _record_crop(sample: Sample, img: Image.Image, crop: Crop) -> Sample:
    out = dict(sample, img=img)
    out["crop"] = compose_crops(sample.get("crop", FULL_CROP), crop)
    return out


@TRANSFORMS.register
class RandomHorizontalFlipWithLabel:
    """Flip the image, its label map (width axis, both planes) and the crop record together."""

    def __init__(self, prob: Probability = 0.5):
        self.prob = prob

    def __call__(self, sample: Sample, rng: random.Random) -> Sample:
        if not rng.random() < self.prob:
            return sample
        img = sample["img"]
        if isinstance(img, Image.Image):
            flipped = img.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            flipped = np.ascontiguousarray(np.asarray(img)[:, ::-1])
        out = dict(sample, img=flipped)
        if "label" in sample:
            out["label"] = np.ascontiguousarray(sample["label"][..., ::-1])
        if "crop" in sample:
            top, left, height, width = sample["crop"]
            out["crop"] = (top, 1.0 - left - width, height, width)
        return out


@TRANSFORMS.register
class RandomResizedCropWithCoords:
    """timm 0.4.5 ``RandomResizedCropAndInterpolation`` that records the crop for the label map."""

    def __init__(self, size: ImageSize, scale: tuple[NonNegativeFloat, NonNegativeFloat] = (0.08, 1.0),
                 ratio: tuple[PositiveFloat, PositiveFloat] = (3 / 4, 4 / 3),
                 interpolation: RandomInterpolation = "random"):
        if scale[0] > scale[1] or ratio[0] > ratio[1]:
            raise ValueError(f"scale and ratio must be (min, max), got scale={scale} ratio={ratio}")
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.filters = resample_filters(interpolation, allow_random=True)

    def get_params(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        """(top i, left j, height h, width w) in pixels: up to 10 random tries, then a central crop."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = rng.uniform(*self.scale) * area
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if w <= width and h <= height:
                return rng.randint(0, height - h), rng.randint(0, width - w), h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, sample: Sample, rng: random.Random) -> Sample:
        img = as_pil(sample["img"])
        i, j, h, w = self.get_params(img.width, img.height, rng)
        resample = draw_filter(self.filters, rng)
        out_h, out_w = self.size
        resized = img.crop((j, i, j + w, i + h)).resize((out_w, out_h), resample)
        return _record_crop(sample, resized, (i / img.height, j / img.width, h / img.height, w / img.width))


def centre_crop_start(side: int, crop: int) -> int:
    """Where torchvision's ``center_crop`` of ``crop`` pixels starts along a side of ``side`` pixels.
    A shorter side is padded first, ``(crop - side) // 2`` before it: the start is minus that (not
    ``round``, which takes -15.5 to -16)."""
    if side < crop:
        return -((crop - side) // 2)
    return int(round((side - crop) / 2.0))


@TRANSFORMS.register
class ResizeCropPct:
    """timm eval transform: resize the shorter side to ``floor(size / crop_pct)``, centre-crop ``size``.
    A ``crop_pct`` above 1 (VOLO-D4/D5 at 448/512 use 1.15) pads with black as torchvision's ``CenterCrop``."""

    def __init__(self, size: PositiveInt, crop_pct: Annotated[float, Range(0, 2, low_open=True)] = 0.9,
                 interpolation: Interpolation = "bicubic"):
        if not 0 < crop_pct <= 2:
            raise ValueError(f"crop_pct must be in (0, 2], got {crop_pct}")
        self.size = size
        self.scale_size = int(math.floor(size / crop_pct))
        self.filter = resample_filters(interpolation, allow_random=False)[0]

    def __call__(self, sample: Sample, rng: random.Random) -> Sample:
        img = as_pil(sample["img"])
        width, height = img.size
        if width <= height:
            new_w, new_h = self.scale_size, int(self.scale_size * height / width)
        else:
            new_w, new_h = int(self.scale_size * width / height), self.scale_size
        resized = img.resize((new_w, new_h), self.filter)
        top, left = centre_crop_start(new_h, self.size), centre_crop_start(new_w, self.size)
        cropped = resized.crop((left, top, left + self.size, top + self.size))  # PIL fills outside with 0
        crop = (top / new_h, left / new_w, self.size / new_h, self.size / new_w)
        return _record_crop(sample, cropped, crop)


@TRANSFORMS.register
class Normalize:
    """uint8 RGB image -> float32 ``[3, H, W]``: ``(x / 255 - mean) / std`` per channel."""

    def __init__(self, mean: Channels = IMAGENET_MEAN,
                 std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = IMAGENET_STD):
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def __call__(self, sample: Sample, rng: random.Random) -> Sample:
        return dict(sample, img=(to_chw_float(sample["img"]) - self.mean) / self.std)
