"""Image-level Mixup / CutMix on top of (token-label) targets, as the official ``TokenLabelMixup``."""
from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import paddle

from ..utils.registry import BATCH_TRANSFORMS, ConfigError, NonNegativeFloat, Probability, Range
from .pipeline import Batch, BatchTransform, Step

ImageBox = tuple[int, int, int, int]  # (top, bottom, left, right) in pixels
SideShare = Annotated[float, Range(0, 1, low_open=True)]  # of the image side, in (0, 1]


def mix_targets(targets: paddle.Tensor, lam: float) -> paddle.Tensor:
    """``lam * t + (1 - lam) * t.flip(0)`` on every column (the official ``mixup_target``: token
    targets are mixed globally, not by region)."""
    return targets * lam + targets.flip(0) * (1.0 - lam)


def cutmix_box(rng: np.random.RandomState, height: int, width: int, lam: float,
               minmax: tuple[float, float] | None = None) -> ImageBox:
    """A CutMix rectangle (timm ``rand_bbox`` / ``rand_bbox_minmax``), possibly clipped at the border."""
    if minmax is not None:
        cut_h = rng.randint(int(height * minmax[0]), int(height * minmax[1]))
        cut_w = rng.randint(int(width * minmax[0]), int(width * minmax[1]))
        top, left = rng.randint(0, height - cut_h), rng.randint(0, width - cut_w)
        return top, top + cut_h, left, left + cut_w
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = rng.randint(height), rng.randint(width)
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return int(top), int(bottom), int(left), int(right)


def paste_box(images: paddle.Tensor, box: ImageBox) -> paddle.Tensor:
    """Images whose ``box`` region comes from the batch-flipped partner."""
    top, bottom, left, right = box
    if top >= bottom or left >= right:
        return images
    rows = images[:, :, top:bottom]
    patch = paddle.concat([rows[:, :, :, :left], rows.flip(0)[:, :, :, left:right], rows[:, :, :, right:]], axis=3)
    return paddle.concat([images[:, :, :top], patch, images[:, :, bottom:]], axis=2)


@BATCH_TRANSFORMS.register
class Mixup(BatchTransform):
    """Per batch: with probability ``prob`` mix the images with the batch-flipped batch, by Mixup
    (``lam ~ Beta(mixup_alpha)``) or CutMix (``lam ~ Beta(cutmix_alpha)``, chosen with ``switch_prob``
    when both are on), and mix the targets with the same ``lam`` (for CutMix the area share actually
    pasted when ``correct_lam``). After the target stage, before the teacher and MixToken, as the
    official loader. Draws are seeded by (run seed, rank, step)."""

    stream = 2

    def __init__(self, mixup_alpha: NonNegativeFloat = 0.8, cutmix_alpha: NonNegativeFloat = 1.0,
                 cutmix_minmax: tuple[SideShare, SideShare] | None = None, prob: Probability = 1.0,
                 switch_prob: Probability = 0.5, correct_lam: bool = True):
        if mixup_alpha <= 0 and cutmix_alpha <= 0 and cutmix_minmax is None:
            raise ConfigError("Mixup needs mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax")
        if cutmix_minmax is not None and not (len(cutmix_minmax) == 2 and 0 < cutmix_minmax[0] < cutmix_minmax[1] <= 1):
            raise ConfigError(f"Mixup cutmix_minmax must be [min, max] with 0 < min < max <= 1, got {cutmix_minmax}")
        if not (0 <= prob <= 1 and 0 <= switch_prob <= 1):
            raise ConfigError(f"Mixup prob and switch_prob must be in [0, 1], got {prob}, {switch_prob}")
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = 1.0 if cutmix_minmax is not None else cutmix_alpha
        self.cutmix_minmax = tuple(cutmix_minmax) if cutmix_minmax is not None else None
        self.prob = prob
        self.switch_prob = switch_prob
        self.correct_lam = correct_lam

    def sample(self, rng: np.random.RandomState) -> tuple[float, bool]:
        """``(lam, use_cutmix)`` for one batch; ``lam == 1`` means no mixing."""
        if rng.rand() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.rand() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), use_cutmix

    def __call__(self, batch: Batch, step: Step) -> Batch:
        rng = step.rng(self.stream)
        lam, use_cutmix = self.sample(rng)
        if lam == 1.0:
            return batch
        images = batch.images
        if use_cutmix:
            height, width = images.shape[2:]
            box = cutmix_box(rng, height, width, lam, self.cutmix_minmax)
            images = paste_box(images, box)
            if self.correct_lam or self.cutmix_minmax is not None:
                lam = 1.0 - (box[1] - box[0]) * (box[3] - box[2]) / (height * width)
        else:
            images = images * lam + images.flip(0) * (1.0 - lam)
        return batch.replace(images=images, targets=mix_targets(batch.targets, lam))
