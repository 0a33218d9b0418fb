"""The packed per-sample token-label layout the dataset yields and the target builder reads.

Packed per-sample layout ``[3, k, H, W]`` float32 (collated to ``[B, 3, k, H, W]``):
plane 0 the top-k logits, plane 1 their class ids, plane 2 zeros except
``[2, 0, 0, 0:4]`` = crop (top, left, height, width) as fractions of the full image and
``[2, 0, 0, 5]`` = ground-truth class id.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import paddle

GT_COLUMN = 5
MIN_LABEL_WIDTH = GT_COLUMN + 1  # plane 2 row 0 holds the crop (0:4) and the ground truth (5)


def pack_label_sample(label_map: np.ndarray, crop: Sequence[float], gt: int) -> np.ndarray:
    """Append the crop/ground-truth plane to a ``[2, k, H, W]`` label map -> ``[3, k, H, W]`` float32."""
    label_map = np.asarray(label_map, dtype=np.float32)
    if label_map.ndim != 4 or label_map.shape[0] != 2:
        raise ValueError(f"token-label map must have shape [2, k, H, W], got {list(label_map.shape)}")
    _, k, h, w = label_map.shape
    check_width(w)
    packed = np.zeros((3, k, h, w), dtype=np.float32)
    packed[:2] = label_map
    packed[2, 0, 0, :4] = crop
    packed[2, 0, 0, GT_COLUMN] = gt
    return packed


def crop_and_truth(labels: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
    """The crops ``[B, 4]`` (top, left, height, width) and ground-truth ids ``[B]`` int64 of packed labels."""
    info = labels[:, 2, 0, 0]
    return info[:, :4], info[:, GT_COLUMN].astype("int64")


def check_width(width: int) -> None:
    """Raise unless label maps of ``width`` columns have room for the crop and ground-truth entries."""
    if width < MIN_LABEL_WIDTH:
        raise ValueError(f"token-label maps need width >= {MIN_LABEL_WIDTH} to hold the crop and "
                         f"ground-truth entries, got width {width}")


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
