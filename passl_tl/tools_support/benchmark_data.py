"""Data-pipeline benchmark: loader throughput with and without token labels, label read rates,
and the batch target builder against the official dense formulation."""
from __future__ import annotations

import random

import numpy as np
import paddle
import paddle.nn.functional as F

from ..datasets.token_label import crop_and_truth, dense_label_map, pack_label_sample, pool_crop
from ..datasets.transforms import RandomResizedCropWithCoords


def dense_token_targets(labels: paddle.Tensor | np.ndarray, num_classes: int, label_size: int = 14,
                        smoothing: float = 0.1, box_order: str = "correct") -> paddle.Tensor:
    """The official formulation of ``make_token_targets``: scatter the top-k logits into a dense
    ``[B, C, H, W]`` map, roi_align it to 1x1 and ``label_size``², softmax over all classes, smooth."""
    labels = paddle.to_tensor(labels, dtype="float32")
    b = labels.shape[0]
    crop, gt = crop_and_truth(labels)
    dense = dense_label_map(labels, num_classes)
    pooled = pool_crop(dense, crop, 1, box_order).reshape([b, num_classes, 1])
    if label_size > 1:
        tokens = pool_crop(dense, crop, label_size, box_order)
        pooled = paddle.concat([pooled, tokens.reshape([b, num_classes, label_size * label_size])], axis=2)
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    truth = F.one_hot(gt, num_classes) * (on - off) + off
    return paddle.concat([truth.unsqueeze(2), F.softmax(pooled, axis=1) * on + off], axis=2)


def synthetic_token_labels(batch: int, num_classes: int, classes_per_image: int, k: int = 5,
                           map_hw: tuple[int, int] = (18, 18), image_size: int = 224,
                           seed: int = 0) -> np.ndarray:
    """A packed label batch ``[B, 3, k, H, W]`` as the loader yields it, with a training crop each.

    Every sample draws its ground truth and, per cell, k distinct top-k ids (logits descending)
    from its own ``classes_per_image`` classes: how many distinct classes a map mentions sets the
    builder's work (real maps are spatially coherent; ``num_classes`` gives the worst case).
    Crops are ``RandomResizedCropWithCoords(image_size)`` draws on a square image.
    """
    if not k <= classes_per_image <= num_classes:
        raise ValueError(f"classes_per_image must be in [k={k}, num_classes={num_classes}], "
                         f"got {classes_per_image}")
    rng = np.random.default_rng(seed)
    h, w = map_hw
    pools = np.argsort(rng.random((batch, num_classes)), axis=1)[:, :classes_per_image]
    picks = np.argpartition(rng.random((batch, classes_per_image, h, w)), k - 1, axis=1)[:, :k]
    logits = -np.sort(-rng.normal(2.0, 3.0, (batch, k, h, w)), axis=1)
    cropper = RandomResizedCropWithCoords(image_size)
    crop_rng = random.Random(seed)
    return np.stack([pack_label_sample(
        np.stack([logits[i], pools[i][picks[i]]]),
        [v / image_size for v in cropper.get_params(image_size, image_size, crop_rng)],
        int(pools[i, 0])) for i in range(batch)])
