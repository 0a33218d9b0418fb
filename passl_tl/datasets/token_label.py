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
    """Scatter the top-k logits of packed ``labels [B, 3, k, H, W]`` into a zero ``[B, C, H, W]`` map.

    With :func:`pool_crop` this is the official (dense) formulation, kept as the reference that
    :func:`make_token_targets` is tested and benchmarked against.
    """
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


def crop_and_truth(labels: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
    """The crops ``[B, 4]`` (top, left, height, width) and ground-truth ids ``[B]`` int64 of packed labels."""
    info = labels[:, 2, 0, 0]
    return info[:, :4], info[:, _GT_COLUMN].astype("int64")


def make_token_targets(labels: paddle.Tensor | np.ndarray, num_classes: int, label_size: int = 14,
                       smoothing: float = 0.1, box_order: str = "correct") -> paddle.Tensor:
    """Soft token-label targets ``[B, C, 2 + label_size**2]`` (``[B, C, 2]`` when label_size is 1).

    Column 0 is the smoothed one-hot ground truth, column 1 the cls target (1x1 pooling of the
    crop), columns 2.. the ``label_size x label_size`` token targets row-major. Pooled logits are
    softmaxed over classes, then mapped to ``p * on + off`` with ``off = smoothing / C`` and
    ``on = 1 - smoothing + off``. ``labels`` is the packed batch ``[B, 3, k, H, W]``; it is not modified.

    Equal (to float32 round-off) to the official dense formulation, :func:`pool_crop` of
    :func:`dense_label_map`, without its ``[B, C, H, W]`` map: roi_align runs per channel, so
    only the U classes a sample mentions (top-k ids, ground truth) are pooled, from a compact
    ``[B, U + 1, H, W]`` map whose last slot, the background, stands for every other class (they
    all pool to 0); the output is one row gather from a ``[B, U + 1, 2 + s**2]`` table of targets.
    A class repeated within a cell keeps one logit, as in the dense scatter. Reads U on the host.
    """
    _check_box_order(box_order)
    if label_size < 1:
        raise ValueError(f"label_size must be >= 1, got {label_size}")
    from_numpy = not isinstance(labels, paddle.Tensor)
    labels = _as_float_tensor(labels)
    if labels.ndim != 5 or labels.shape[1] != 3:
        raise ValueError(f"packed token labels must have shape [B, 3, k, H, W], got {list(labels.shape)}")
    _check_width(labels.shape[4])
    crop, gt = crop_and_truth(labels)
    if from_numpy:  # tensors come from the dataset, which checks ids file by file
        check_class_ids(labels[:, 1].numpy(), labels[:, 2, 0, 0, _GT_COLUMN].numpy(), num_classes,
                        "token labels")

    ids = labels[:, 1].astype("int64")
    slots = _class_slots(ids, gt, num_classes)
    maps = _compact_maps(labels[:, 0], ids, slots, int(slots.max()) + 1)
    pooled = [pool_crop(maps, crop, size, box_order).flatten(2)
              for size in ((1, label_size) if label_size > 1 else (1,))]
    table = _target_table(paddle.concat([paddle.zeros_like(pooled[0])] + pooled, axis=2),
                          paddle.take_along_axis(slots, gt[:, None], axis=1), num_classes, smoothing)
    rows = paddle.arange(len(table), dtype="int64")[:, None] * table.shape[1] + slots
    return paddle.gather(table.flatten(0, 1), rows.flatten()).reshape([len(table), num_classes, -1])


def _class_slots(ids: paddle.Tensor, gt: paddle.Tensor, num_classes: int) -> paddle.Tensor:
    """``[B, C]``: the classes each sample mentions (label ids, ground truth) numbered 0..n-1 in class
    order; the others get slot U = max n, the background."""
    b = ids.shape[0]
    mentioned = paddle.concat([ids.reshape([b, -1]), gt[:, None]], axis=1)
    present = paddle.put_along_axis(paddle.zeros([b, num_classes], dtype="int64"), mentioned,
                                    paddle.ones_like(mentioned), axis=1)
    numbered = paddle.cumsum(present, axis=1)
    return paddle.where(present > 0, numbered - 1, numbered[:, -1].max())


def _compact_maps(logits: paddle.Tensor, ids: paddle.Tensor, slots: paddle.Tensor,
                  width: int) -> paddle.Tensor:
    """``[B, width, H, W]``: the top-k ``logits [B, k, H, W]`` scattered to the slots of their ``ids``."""
    b, k, h, w = logits.shape
    cell_slots = paddle.take_along_axis(slots, ids.reshape([b, -1]), axis=1).reshape([b, k, h * w])
    maps = paddle.put_along_axis(paddle.zeros([b, width, h * w], dtype="float32"), cell_slots,
                                 logits.reshape([b, k, h * w]), axis=1)
    return maps.reshape([b, width, h, w])


def _target_table(pooled: paddle.Tensor, gt_slot: paddle.Tensor, num_classes: int,
                  smoothing: float) -> paddle.Tensor:
    """Target rows ``[B, U + 1, O]`` of the slots of ``pooled [B, U + 1, O]`` (the last one the background).

    Column 0 becomes the smoothed ground truth of ``gt_slot [B, 1]``, the others the smoothed
    softmax over all ``num_classes`` classes: the softmax over the slots, rescaled for the
    ``num_classes - U - 1`` further classes that pool to 0 like the background (-1 when a sample
    mentions every class: the background slot is then no class).
    """
    width = pooled.shape[1]
    probs = F.softmax(pooled, axis=1)
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    table = probs * (on / (1.0 + (num_classes - width) * probs[:, -1:])) + off
    table[:, :, 0] = F.one_hot(gt_slot.squeeze(1), width) * (on - off) + off
    return table


@TRANSFORMS.register
class TokenLabelTargets:
    """Batch label transform for the trainer: packed ``[B, 3, k, H, W]`` labels -> soft targets.

    ``upsample_labels``: allow a ``label_size`` above the label maps' H x W (RoIAlign then samples the
    map more finely than it was made, as the official 384/448 fine-tuning does with 18 x 18 maps);
    the trainer refuses it otherwise."""

    def __init__(self, num_classes: int, label_size: int = 14, smoothing: float = 0.1,
                 box_order: str = "correct", upsample_labels: bool = False):
        _check_box_order(box_order)
        self.num_classes = num_classes
        self.label_size = label_size
        self.upsample_labels = upsample_labels
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


def class_id_problem(ids: np.ndarray, num_classes: int) -> str | None:
    """Why ``ids`` are not class ids in ``[0, num_classes)`` (NaN, out of range, fractions); None if they are."""
    lowest, highest = ids.min(), ids.max()
    if np.isnan(lowest):  # min and max propagate NaN
        return "has NaN class ids"
    if lowest < 0 or highest >= num_classes:
        return f"class ids span [{lowest:g}, {highest:g}], outside [0, {num_classes}) for num_classes={num_classes}"
    if (ids != np.rint(ids)).any():
        return "has non-integer class ids"
    return None


def check_class_ids(ids: np.ndarray, gt: np.ndarray | int, num_classes: int, source: str) -> None:
    """Raise naming ``source`` unless the label ids and the ground truth are class ids (:func:`class_id_problem`)."""
    problem = class_id_problem(np.append(ids, gt), num_classes)
    if problem:
        raise ValueError(f"{source}: {problem}")
