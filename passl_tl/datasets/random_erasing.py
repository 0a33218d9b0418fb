"""Random erasing (timm 0.4.5 ``RandomErasing``) of the normalized image; the label map is untouched."""
from __future__ import annotations

import math
import random
from typing import Annotated, Literal, get_args

import numpy as np

from ..utils.registry import TRANSFORMS, ConfigError, PositiveFloat, PositiveInt, Probability, Range
from .transforms import Sample

EraseMode = Literal["pixel", "rand", "const"]
ERASE_MODES = get_args(EraseMode)
AreaShare = Annotated[float, Range(0, 1, low_open=True)]  # of the image area, in (0, 1]
MAX_ATTEMPTS = 10


@TRANSFORMS.register
class RandomErasing:
    """Erase random rectangles of a normalized float32 ``[C, H, W]`` image (after ``Normalize``).

    With probability ``prob``, ``count`` rectangles (uniform in [min_count, max_count]) are tried,
    each of area ``U(min_area, max_area) * H * W / count`` and aspect ``h / w`` log-uniform in
    [min_aspect, max_aspect] (default ``1 / min_aspect``); a rectangle that does not fit is redrawn,
    up to 10 times. Fill: ``"pixel"`` per-pixel N(0, 1), ``"rand"`` one N(0, 1) per channel,
    ``"const"`` 0. Noise comes from a NumPy generator seeded from ``rng``.
    """

    def __init__(self, prob: Probability = 0.25, mode: EraseMode = "pixel", min_area: AreaShare = 0.02,
                 max_area: AreaShare = 1 / 3, min_aspect: PositiveFloat = 0.3, max_aspect: PositiveFloat | None = None,
                 max_count: PositiveInt = 1, min_count: PositiveInt = 1):
        if mode not in ERASE_MODES:
            raise ConfigError(f"mode must be one of {ERASE_MODES}, got {mode!r}")
        if not 0 <= prob <= 1:
            raise ConfigError(f"RandomErasing prob must be in [0, 1], got {prob}")
        if not 0 < min_area <= max_area <= 1 or not 1 <= min_count <= max_count:
            raise ConfigError(f"RandomErasing needs 0 < min_area <= max_area <= 1 and 1 <= min_count <= max_count, "
                              f"got area ({min_area}, {max_area}), count ({min_count}, {max_count})")
        if min_aspect <= 0 or (max_aspect is not None and max_aspect < min_aspect):
            raise ConfigError(f"RandomErasing needs 0 < min_aspect <= max_aspect, got ({min_aspect}, {max_aspect})")
        self.prob = prob
        self.mode = mode
        self.area = (min_area, max_area)
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))
        self.count = (min_count, max_count)

    def boxes(self, height: int, width: int, rng: random.Random) -> list[tuple[int, int, int, int]]:
        """The erased rectangles (top, left, h, w) of one image; empty when not erasing."""
        if rng.random() > self.prob:
            return []
        count = self.count[0] if self.count[0] == self.count[1] else rng.randint(*self.count)
        boxes = []
        for _ in range(count):
            for _ in range(MAX_ATTEMPTS):
                target_area = rng.uniform(*self.area) * height * width / count
                aspect = math.exp(rng.uniform(*self.log_aspect))
                h = round(math.sqrt(target_area * aspect))
                w = round(math.sqrt(target_area / aspect))
                if w < width and h < height:
                    boxes.append((rng.randint(0, height - h), rng.randint(0, width - w), h, w))
                    break
        return boxes

    def fill(self, channels: int, h: int, w: int, rng: random.Random) -> np.ndarray:
        """Values for one ``h x w`` rectangle, broadcastable to ``(channels, h, w)``."""
        if self.mode == "const":
            return np.zeros((channels, 1, 1), dtype=np.float32)
        size = (channels, h, w) if self.mode == "pixel" else (channels, 1, 1)
        return np.random.default_rng(rng.getrandbits(64)).standard_normal(size, dtype=np.float32)

    def __call__(self, sample: Sample, rng: random.Random) -> Sample:
        img = sample["img"]
        if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.dtype == np.float32):
            raise TypeError("RandomErasing expects the normalized float32 [C, H, W] image: put it after Normalize")
        boxes = self.boxes(img.shape[1], img.shape[2], rng)
        if not boxes:
            return sample
        img = img.copy()
        for top, left, h, w in boxes:
            img[:, top:top + h, left:left + w] = self.fill(img.shape[0], h, w, rng)
        return dict(sample, img=img)
