"""Token-label targets: pack one sample's label map, turn a batch of them into soft targets.

Packed per-sample layout ``[3, k, H, W]`` float32 (collated to ``[B, 3, k, H, W]``):
plane 0 the top-k logits, plane 1 their class ids, plane 2 zeros except
``[2, 0, 0, 0:4]`` = crop (top, left, height, width) as fractions of the full image and
``[2, 0, 0, 5]`` = ground-truth class id.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import paddle
import paddle.nn.functional as F

from ..utils.registry import TRANSFORMS

BOX_ORDERS = ("correct", "official")
_GT_COLUMN = 5
MIN_LABEL_WIDTH = _GT_COLUMN + 1  # plane 2 row 0 holds the crop (0:4) and the ground truth (5)


def pack_label_sample(label_map: np.ndarray, crop: Sequence[float], gt: int) -> np.ndarray:
    """Append the crop/ground-truth plane to a ``[2, k, H, W]`` label map -> ``[3, k, H, W]`` float32."""
    label_map = np.asarray(label_map, dtype=np.float32)
    if label_map.ndim != 4 or label_map.shape[0] != 2:
        raise ValueError(f"token-label map must have shape [2, k, H, W], got {list(label_map.shape)}")
    _, k, h, w = label_map.shape
    _check_width(w)
    packed = np.zeros((3, k, h, w), dtype=np.float32)
    packed[:2] = label_map
    packed[2, 0, 0, :4] = crop
    packed[2, 0, 0, _GT_COLUMN] = gt
    return packed


def dense_label_map(labels: paddle.Tensor, num_classes: int) -> paddle.Tensor:
    """Scatter the top-k logits of packed ``labels [B, 3, k, H, W]`` into a zero ``[B, C, H, W]`` map."""
    b, _, _, h, w = labels.shape
    ids = labels[:, 1].astype("int64")
    zeros = paddle.zeros([b, num_classes, h, w], dtype="float32")
    return paddle.put_along_axis(zeros, ids, labels[:, 0], axis=1)


def pool_crop(dense: paddle.Tensor, crop: paddle.Tensor, output_size: int,
              box_order: str = "correct") -> paddle.Tensor:
    """Bilinear RoI-align of each sample's crop region of ``dense [B, C, H, W]`` -> ``[B, C, s, s]``.

    ``crop [B, 4]`` is (top, left, height, width) in fractions of the image; rows are scaled by
    the map height and columns by its width. Semantics are torchvision
    ``roi_align(aligned=False, sampling_ratio=-1)`` on ``coords * size - 0.5``, which is
    ``aligned=True`` on ``coords * size``. ``box_order="official"`` reproduces the official code:
    it passes (y1, x1, y2, x2) where (x1, y1, x2, y2) is read, pooling the crop mirrored across
    the diagonal, and scales both axes by the map width.
    """
    top, left, height, width = crop.unbind(axis=1)
    y1, x1, y2, x2 = top, left, top + height, left + width
    map_h, map_w = float(dense.shape[2]), float(dense.shape[3])
    if box_order == "official":
        boxes = paddle.stack((y1, x1, y2, x2), axis=1) * map_w
    else:
        boxes = paddle.stack((x1 * map_w, y1 * map_h, x2 * map_w, y2 * map_h), axis=1)
    boxes_num = paddle.ones([dense.shape[0]], dtype="int32")
    return paddle.vision.ops.roi_align(dense, boxes, boxes_num, output_size,
                                       spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def make_token_targets(labels: paddle.Tensor | np.ndarray, num_classes: int, label_size: int = 14,
                       smoothing: float = 0.1, box_order: str = "correct") -> paddle.Tensor:
    """Soft token-label targets ``[B, C, 2 + label_size**2]`` (``[B, C, 2]`` when label_size is 1).

    Column 0 is the smoothed one-hot ground truth, column 1 the cls target (1x1 pooling of the
    crop), columns 2.. the ``label_size x label_size`` token targets row-major. Pooled logits are
    softmaxed over classes, then mapped to ``p * on + off`` with ``off = smoothing / C`` and
    ``on = 1 - smoothing + off``. ``labels`` is the packed batch ``[B, 3, k, H, W]``; it is not modified.
    """
    _check_box_order(box_order)
    if label_size < 1:
        raise ValueError(f"label_size must be >= 1, got {label_size}")
    from_numpy = not isinstance(labels, paddle.Tensor)
    labels = _as_float_tensor(labels)
    if labels.ndim != 5 or labels.shape[1] != 3:
        raise ValueError(f"packed token labels must have shape [B, 3, k, H, W], got {list(labels.shape)}")
    _check_width(labels.shape[4])
    info = labels[:, 2, 0, 0]
    if from_numpy:  # tensors come from the dataset, which checks ids file by file (no host sync here)
        check_class_ids(labels[:, 1].numpy(), info[:, _GT_COLUMN].numpy(), num_classes, "token labels")
    gt = info[:, _GT_COLUMN].astype("int64")

    dense = dense_label_map(labels, num_classes)
    b = labels.shape[0]
    pooled = pool_crop(dense, info[:, :4], 1, box_order).reshape([b, num_classes, 1])
    if label_size > 1:
        tokens = pool_crop(dense, info[:, :4], label_size, box_order)
        pooled = paddle.concat([pooled, tokens.reshape([b, num_classes, label_size * label_size])], axis=2)

    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    soft = F.softmax(pooled, axis=1) * on + off
    truth = F.one_hot(gt, num_classes) * (on - off) + off
    return paddle.concat([truth.unsqueeze(2), soft], axis=2)


@TRANSFORMS.register
class TokenLabelTargets:
    """Batch label transform for the trainer: packed ``[B, 3, k, H, W]`` labels -> soft targets."""

    def __init__(self, num_classes: int, label_size: int = 14, smoothing: float = 0.1,
                 box_order: str = "correct"):
        _check_box_order(box_order)
        self.num_classes = num_classes
        self.label_size = label_size
        self.smoothing = smoothing
        self.box_order = box_order

    def __call__(self, labels: paddle.Tensor | np.ndarray) -> paddle.Tensor:
        return make_token_targets(labels, self.num_classes, self.label_size, self.smoothing, self.box_order)


def _as_float_tensor(labels: paddle.Tensor | np.ndarray) -> paddle.Tensor:
    if isinstance(labels, paddle.Tensor):
        return labels.astype("float32")
    return paddle.to_tensor(np.asarray(labels, dtype=np.float32))


def _check_width(width: int) -> None:
    if width < MIN_LABEL_WIDTH:
        raise ValueError(f"token-label maps need width >= {MIN_LABEL_WIDTH} to hold the crop and "
                         f"ground-truth entries, got width {width}")


def _check_box_order(box_order: str) -> None:
    if box_order not in BOX_ORDERS:
        raise ValueError(f"box_order must be one of {BOX_ORDERS}, got {box_order!r}")


def check_class_ids(ids: np.ndarray, gt: np.ndarray | int, num_classes: int, source: str) -> None:
    """Raise naming ``source`` if a label id or the ground truth is outside ``[0, num_classes)``."""
    lowest, highest = min(ids.min(), np.min(gt)), max(ids.max(), np.max(gt))
    if lowest < 0 or highest >= num_classes:
        raise ValueError(f"{source}: class ids span [{lowest:g}, {highest:g}], "
                         f"outside [0, {num_classes}) for num_classes={num_classes}")
