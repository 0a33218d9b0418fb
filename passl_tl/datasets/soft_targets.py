"""Soft targets for plain class labels (training without token labels)."""
from __future__ import annotations

import paddle
import paddle.nn.functional as F

from ..utils.registry import TRANSFORMS


@TRANSFORMS.register
class SoftTargets:
    """Batch label transform: class ids ``[B]`` -> smoothed one-hot ``[B, C]`` (off = smoothing / C,
    on = 1 - smoothing + off, as timm's ``mixup_target``). With these the token-label head
    supervises every token with the image label (the official loss's 2-D target path)."""

    def __init__(self, num_classes: int, smoothing: float = 0.1):
        self.num_classes = num_classes
        self.smoothing = smoothing

    def __call__(self, labels: paddle.Tensor) -> paddle.Tensor:
        off = self.smoothing / self.num_classes
        one_hot = F.one_hot(labels.reshape([-1]).astype("int64"), self.num_classes)
        return one_hot * (1.0 - self.smoothing) + off
