"""The target stage for plain class labels (training without token labels)."""
from __future__ import annotations

from typing import Callable

import paddle
import paddle.nn.functional as F

from ..utils.registry import BATCH_TRANSFORMS, Rate
from .pipeline import Batch, BatchTransform, Step


def smoothed_one_hot(labels: paddle.Tensor, num_classes: int, smoothing: float) -> paddle.Tensor:
    """Class ids ``[B]`` -> ``[B, C]`` with off = smoothing / C, on = 1 - smoothing + off (timm's ``mixup_target``)."""
    off = smoothing / num_classes
    return F.one_hot(labels.reshape([-1]).astype("int64"), num_classes) * (1.0 - smoothing) + off


@BATCH_TRANSFORMS.register
class SoftTargets(BatchTransform):
    """Class ids -> smoothed one-hot targets over the model's classes. With these the token-label head
    supervises every token with the image label (the official loss's 2-D target path)."""

    def __init__(self, smoothing: Rate = 0.1):
        self.smoothing = smoothing
        self.num_classes: int | None = None

    def bind(self, model: paddle.nn.Layer, amp_context: Callable | None) -> None:
        self.num_classes = model.num_classes

    def __call__(self, batch: Batch, step: Step) -> Batch:
        return batch.replace(targets=smoothed_one_hot(batch.targets, self.num_classes, self.smoothing))
