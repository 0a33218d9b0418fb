"""MixToken (LV-ViT): a CutMix box on the token grid, swapped between each sample and its batch-flipped
partner. Everything of it lives here: the box drawn per step (:class:`MixToken`, a batch stage), the
tokens (or a finer feature map) swapped inside the backbone (:func:`mix_tokens`, :func:`mix_map`), the dense
logits swapped back in the head (:func:`unmix_tokens`) and the class target mixed by the box's share
(:func:`mix_class_target`). The box is always drawn on the token grid, the grid of the token labels.

Box convention (official ``rand_bbox``): ``(x1, y1, x2, y2)`` covers rows ``x1:x2`` and columns
``y1:y2`` of the ``[rows, cols]`` token grid; an empty box (``x1 == x2`` or ``y1 == y2``) mixes nothing.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import paddle
from paddle import Tensor

from ..batch.pipeline import Batch, BatchTransform, MixBox, Step
from ..utils.dist import world_size
from ..utils.registry import BATCH_TRANSFORMS, ConfigError, NonNegativeInt, PositiveFloat


def sample_mix_box(rng: np.random.RandomState, grid_size: Sequence[int], alpha: float = 1.0) -> MixBox:
    """Draw ``lam ~ Beta(alpha, alpha)`` and a box on the token grid.

    The draws (beta, then the row centre, then the column centre) are made in the official order, so a
    ``RandomState`` seeded like the official global RNG gives the same box. The box may be empty.
    """
    rows, cols = grid_size
    lam = rng.beta(alpha, alpha)
    cut = math.sqrt(1.0 - lam)
    cut_rows, cut_cols = int(rows * cut), int(cols * cut)
    cx = rng.randint(rows)
    cy = rng.randint(cols)
    x1 = int(np.clip(cx - cut_rows // 2, 0, rows))
    x2 = int(np.clip(cx + cut_rows // 2, 0, rows))
    y1 = int(np.clip(cy - cut_cols // 2, 0, cols))
    y2 = int(np.clip(cy + cut_cols // 2, 0, cols))
    return x1, y1, x2, y2


def is_tensor(box: Sequence[int] | Tensor | None) -> bool:
    """Whether ``box`` is a tensor: an eager one, or a value of a program being compiled."""
    return isinstance(box, (Tensor, paddle.pir.Value))


def is_empty(box: Sequence[int] | Tensor | None) -> bool:
    """Whether ``box`` certainly mixes nothing (a box tensor may: its values are known only when it runs)."""
    return box is None or (not is_tensor(box) and (box[0] >= box[2] or box[1] >= box[3]))


def box_tensor(box: Sequence[int] | None) -> Tensor:
    """``box`` as an int64 ``[4]`` tensor (None: the empty box): what a compiled step takes, so every box runs
    the same program."""
    return paddle.to_tensor(list(box) if box is not None else [0, 0, 0, 0], dtype="int64")


def flip_box(x: Tensor, box: Sequence[int] | Tensor | None, row_axis: int) -> Tensor:
    """Inside ``box``, give sample i the values of sample B−1−i; the box covers indices x1:x2 of
    ``row_axis`` and y1:y2 of the axis after it. Applying it twice is the identity.

    A mask of the box selects between ``x`` and its batch flip: the same values as cutting the box out and
    pasting it back, in half the time with the backward (slices' gradients fill and add whole zero maps),
    and a box tensor ([4], :func:`box_tensor`) needs no values when a compiled program is built."""
    if box is None:
        return x
    col_axis = row_axis + 1
    rows, cols = x.shape[row_axis], x.shape[col_axis]
    if not is_tensor(box):
        x1, y1, x2, y2 = (int(v) for v in box)
        if not (0 <= x1 <= x2 <= rows and 0 <= y1 <= y2 <= cols):
            raise ValueError(f"box {tuple(box)} does not fit a {rows}x{cols} grid")
        if x1 == x2 or y1 == y2:
            return x
        box = box_tensor(box)
    inside = paddle.broadcast_to(_box_mask(box, rows, cols, x.ndim, row_axis), x.shape)  # where's own path
    return paddle.where(inside, paddle.flip(x, axis=0), x)                                  # adds zeros


def _box_mask(box: Tensor, rows: int, cols: int, ndim: int, row_axis: int) -> Tensor:
    """True inside ``box`` on a ``rows x cols`` grid, shaped to broadcast against an ``ndim``-d map whose grid
    starts at ``row_axis``."""
    row_index, col_index = paddle.arange(rows, dtype="int64"), paddle.arange(cols, dtype="int64")
    in_rows = paddle.logical_and(row_index >= box[0], row_index < box[2])
    in_cols = paddle.logical_and(col_index >= box[1], col_index < box[3])
    shape = [1] * ndim
    shape[row_axis], shape[row_axis + 1] = rows, cols
    return paddle.logical_and(in_rows.unsqueeze(1), in_cols.unsqueeze(0)).reshape(shape)


def mix_map(x: Tensor, box: Sequence[int] | Tensor | None, scale: int = 1, row_axis: int = 1) -> Tensor:
    """A feature map whose grid is ``scale`` times finer than the box's grid, with the box (scaled by ``scale``)
    swapped between partners; rows along ``row_axis``, columns the axis after it.

    A backbone that mixes before it pools to its token grid (VOLO: the box is drawn on the token grid and
    applied to the 2x finer outlooker input) passes its pooling factor as ``scale``."""
    if is_empty(box):
        return x
    scaled = box * scale if is_tensor(box) else tuple(int(v) * scale for v in box)
    return flip_box(x, scaled, row_axis)


def mix_tokens(tokens: Tensor, grid_size: Sequence[int], box: Sequence[int] | None) -> Tensor:
    """Row-major tokens ``[B, N, D]`` of the ``grid_size`` grid with the box swapped between partners."""
    B, N, D = tokens.shape
    rows, cols = grid_size
    if N != rows * cols:
        raise ValueError(f"these images give {N} patch tokens, the model was built for a {rows}x{cols} token grid")
    if is_empty(box):
        return tokens
    return mix_map(tokens.reshape([B, rows, cols, D]), box).reshape([B, N, D])


unmix_tokens = mix_tokens  # swapping the box back is the same swap: each token's logits realign with its sample


def mix_lam(box: Sequence[int] | Tensor | None, num_tokens: int) -> float | Tensor:
    """Share of its own tokens a sample keeps: ``1 - box area / N`` (a float64 tensor for a box tensor: the
    same number as the Python float)."""
    if box is None:
        return 1.0
    if is_tensor(box):
        area = ((box[2] - box[0]) * (box[3] - box[1])).astype("float64")
        return 1.0 - area / num_tokens
    x1, y1, x2, y2 = (int(v) for v in box)
    return 1.0 - (x2 - x1) * (y2 - y1) / num_tokens


def mix_class_target(target: Tensor, box: Sequence[int] | Tensor | None, num_tokens: int) -> Tensor:
    """The class target under MixToken: ``lam * t + (1 - lam) * t.flip(0)`` (unchanged without a box)."""
    lam = mix_lam(box, num_tokens)
    if is_tensor(lam):  # rounded to the target's type once, as a Python float is
        return lam.astype(target.dtype) * target + (1.0 - lam).astype(target.dtype) * target.flip(0)
    return target if lam >= 1.0 else lam * target + (1.0 - lam) * target.flip(0)


@BATCH_TRANSFORMS.register
class MixToken(BatchTransform):
    """Batch stage: a fresh box on the model's token grid every step (``Batch.mix_box``).

    The box is seeded by (run seed, rank, global step), so runs and resumed runs are reproducible and
    ranks draw independently. ``box_seeds`` replays a recorded run instead: step ``k`` draws from
    ``RandomState(box_seeds[k])``, as the official code after ``np.random.seed(box_seeds[k])`` (one
    seed per optimizer step of the whole run, one process). Only heads that un-mix their per-token
    outputs (``mixes_tokens``) can train with it, as officially.
    """

    stream = 1

    def __init__(self, alpha: PositiveFloat = 1.0, box_seeds: Sequence[NonNegativeInt] | None = None):
        if box_seeds is not None and not all(isinstance(s, int) and s >= 0 for s in box_seeds):
            raise ConfigError(f"MixToken box_seeds must be a list of non-negative integers, got {box_seeds!r}")
        self.alpha = alpha
        self.box_seeds = None if box_seeds is None else list(box_seeds)
        self.grid_size: tuple[int, int] | None = None

    def bind(self, model: paddle.nn.Layer, amp_context: Callable | None) -> None:
        backbone, head = model.backbone, model.head
        if getattr(backbone, "grid_size", None) is None:
            raise ConfigError(f"MixToken needs a backbone with a token grid; {type(backbone).__name__} has none "
                              f"(remove batch.mixtoken)")
        problem = getattr(backbone, "mix_grid_problem", None)  # a grid that does not divide the map mixed
        if problem:
            raise ConfigError(f"MixToken: {problem}; or remove batch.mixtoken")
        if not getattr(head, "mixes_tokens", False):
            raise ConfigError(f"MixToken needs a head that un-mixes per-token outputs (TokenLabelHead); "
                              f"{type(head).__name__} has none (remove batch.mixtoken)")
        self.grid_size = tuple(backbone.grid_size)

    def check_steps(self, steps: int) -> None:
        """``box_seeds`` must cover the run's ``steps`` (one process)."""
        if self.box_seeds is not None and (len(self.box_seeds) < steps or world_size() > 1):
            raise ConfigError(f"MixToken box_seeds replays one process's run: it needs a seed for each of the "
                              f"{steps} steps and one process, got {len(self.box_seeds)} seeds and {world_size()} "
                              f"processes")

    def __call__(self, batch: Batch, step: Step) -> Batch:
        rng = (np.random.RandomState(self.box_seeds[step.global_step]) if self.box_seeds is not None
               else step.rng(self.stream))
        box = sample_mix_box(rng, self.grid_size, self.alpha)
        return batch.replace(mix_box=None if is_empty(box) else box)
