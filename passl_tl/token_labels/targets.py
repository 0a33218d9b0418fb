"""Token-label targets: packed label maps (``packing``) -> soft targets for the cls token and every token.

``make_token_targets`` is the fast formulation the trainer runs (through the ``TokenLabelTargets``
batch stage); ``dense_token_targets`` is the official dense one, kept as the reference it is tested
and benchmarked against.
"""
from __future__ import annotations

from typing import Callable, Literal, get_args

import numpy as np
import paddle
import paddle.nn.functional as F

from ..batch.pipeline import Batch, BatchTransform, Step
from ..utils.registry import BATCH_TRANSFORMS, ConfigError, PositiveInt, Rate
from .packing import GT_COLUMN, check_class_ids, check_width, crop_and_truth

BoxOrder = Literal["correct", "official"]
BOX_ORDERS = get_args(BoxOrder)


def check_box_order(box_order: str) -> None:
    """Raise unless ``box_order`` is one of :data:`BOX_ORDERS` (see :func:`pool_crop`)."""
    if box_order not in BOX_ORDERS:
        raise ValueError(f"box_order must be one of {BOX_ORDERS}, got {box_order!r}")


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


def dense_token_targets(labels: paddle.Tensor | np.ndarray, num_classes: int, label_size: int = 14,
                        smoothing: float = 0.1, box_order: str = "correct") -> paddle.Tensor:
    """The official formulation of ``make_token_targets``: scatter the top-k logits into a dense
    ``[B, C, H, W]`` map, roi_align it to 1x1 and ``label_size``², softmax over all classes, smooth."""
    labels = labels.astype("float32") if isinstance(labels, paddle.Tensor) else paddle.to_tensor(labels, "float32")
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
    check_box_order(box_order)
    if label_size < 1:
        raise ValueError(f"label_size must be >= 1, got {label_size}")
    from_numpy = not isinstance(labels, paddle.Tensor)
    labels = _as_float_tensor(labels)
    if labels.ndim != 5 or labels.shape[1] != 3:
        raise ValueError(f"packed token labels must have shape [B, 3, k, H, W], got {list(labels.shape)}")
    check_width(labels.shape[4])
    crop, gt = crop_and_truth(labels)
    if from_numpy:  # tensors come from the dataset, which checks ids file by file
        check_class_ids(labels[:, 1].numpy(), labels[:, 2, 0, 0, GT_COLUMN].numpy(), num_classes,
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


def _as_float_tensor(labels: paddle.Tensor | np.ndarray) -> paddle.Tensor:
    if isinstance(labels, paddle.Tensor):
        return labels.astype("float32")
    return paddle.to_tensor(np.asarray(labels, dtype=np.float32))


@BATCH_TRANSFORMS.register
class TokenLabelTargets(BatchTransform):
    """Packed ``[B, 3, k, H, W]`` labels -> ``[B, K, 2 + N]`` targets (``make_token_targets``) on the
    model's token grid, for its ``num_classes`` classes: both are read from the model when bound.

    ``label_size``: the side of the target grid; by default the model's token grid (ViTs: image size / 16, a
    token-labeled CNN: its last feature map), which is the only grid a per-token head can serve. ``1`` pools one
    soft label per crop (``[B, K, 2]``, the official ``--token-label-size 1``, ReLabel's targets) for any
    classifier, CNNs included; the class head alone learns from it.
    ``upsample_labels``: allow a token grid finer than the label maps' H x W (RoIAlign then samples
    the maps more finely than they were made, as the official 384/448 fine-tuning does with 18 x 18
    maps); the trainer refuses it otherwise. ``box_order``: see ``pool_crop``.
    """

    def __init__(self, smoothing: Rate = 0.1, box_order: BoxOrder = "correct", upsample_labels: bool = False,
                 label_size: PositiveInt | None = None):
        check_box_order(box_order)
        self.smoothing = smoothing
        self.box_order = box_order
        self.upsample_labels = upsample_labels
        self.requested_size = label_size
        self.num_classes: int | None = None
        self.label_size: int | None = None

    def bind(self, model: paddle.nn.Layer, amp_context: Callable | None) -> None:
        self.num_classes, self.label_size = model.num_classes, self._label_size(model)

    def _label_size(self, model: paddle.nn.Layer) -> int:
        if self.requested_size == 1:
            return 1
        grid = getattr(model, "grid_size", None)
        name = type(model.backbone).__name__
        if not grid:
            raise ConfigError(f"batch.target (TokenLabelTargets) needs a model with a token grid for per-token "
                              f"targets; {name} has none (a CNN: set model.img_size), or set "
                              f"batch.target.label_size: 1 for one pooled label per image (ReLabel)")
        if grid[0] != grid[1]:
            raise ConfigError(f"batch.target (TokenLabelTargets) needs a square token grid, the model's is "
                              f"{grid[0]}x{grid[1]} (model.img_size {getattr(model, 'img_size', None)})")
        if self.requested_size not in (None, grid[0]):
            raise ConfigError(f"batch.target.label_size {self.requested_size} cannot be served by {name}: its head "
                              f"has one output per cell of its {grid[0]}x{grid[1]} token grid (model.img_size "
                              f"{getattr(model, 'img_size', None)}); use label_size {grid[0]} (the default), or 1 "
                              f"for one pooled label per image")
        return int(grid[0])

    def __call__(self, batch: Batch, step: Step) -> Batch:
        return batch.replace(targets=make_token_targets(batch.targets, self.num_classes, self.label_size,
                                                        self.smoothing, self.box_order))
