"""MixToken: swap a box of patch tokens with the batch-flipped partner (LV-ViT)."""
from __future__ import annotations

import math

import numpy as np

from ...utils.registry import HOOKS
from .hook import Hook

MixBox = tuple[int, int, int, int]


def sample_mix_box(rng: np.random.RandomState, grid_size: tuple[int, int], alpha: float = 1.0) -> MixBox:
    """Draw ``lam ~ Beta(alpha, alpha)`` and a box on the token grid (official ``rand_bbox``).

    Returns ``(x1, y1, x2, y2)``: rows ``x1:x2`` and columns ``y1:y2`` of the ``[rows, cols]``
    grid. The draws (beta, then the row centre, then the column centre) are made in the
    official order, so a ``RandomState`` seeded like the official global RNG gives the same box.
    The box may be empty (``x1 == x2``), which means no mixing.
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


def box_lam(box: MixBox | None, num_tokens: int) -> float:
    """Share of tokens a sample keeps from itself: ``1 - box area / N``."""
    if box is None:
        return 1.0
    x1, y1, x2, y2 = box
    return 1.0 - (x2 - x1) * (y2 - y1) / num_tokens


@HOOKS.register
class MixTokenHook(Hook):
    """Hands the model a fresh MixToken box every training iteration.

    The box is seeded by (run seed, rank, global step), so runs and resumed runs are
    reproducible and ranks draw independently. ``prob`` is the chance of mixing at all.
    """

    priority = 10

    def __init__(self, alpha: float = 1.0, prob: float = 1.0):
        self.alpha = alpha
        self.prob = prob

    def before_train_iter(self, trainer) -> None:
        rng = np.random.RandomState([trainer.seed, trainer.rank, trainer.global_step, 0x6D74])
        if self.prob < 1.0 and rng.rand() >= self.prob:
            trainer.mix_box = None
            return
        box = sample_mix_box(rng, trainer.grid_size, self.alpha)
        trainer.mix_box = box if box[0] < box[2] and box[1] < box[3] else None
