"""MixToken: swap a box of patch tokens with the batch-flipped partner (LV-ViT)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ...utils.dist import world_size
from ...utils.registry import HOOKS, ConfigError
from ...utils.seeding import derived_seed
from .hook import Hook

if TYPE_CHECKING:
    from ..trainer import Trainer

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


@HOOKS.register
class MixTokenHook(Hook):
    """Hands the model a fresh MixToken box every training iteration.

    The box is seeded by (run seed, rank, global step), so runs and resumed runs are
    reproducible and ranks draw independently. ``box_seeds`` replays a recorded run instead:
    step ``k`` draws from ``RandomState(box_seeds[k])``, as the official code after
    ``np.random.seed(box_seeds[k])`` (one seed per optimizer step of the whole run, one process).
    """

    priority = 10
    STREAM = 1  # tells this random stream apart from others derived from the same step

    def __init__(self, alpha: float = 1.0, box_seeds: Sequence[int] | None = None):
        if box_seeds is not None and not all(isinstance(s, int) and s >= 0 for s in box_seeds):
            raise ConfigError(f"MixTokenHook box_seeds must be a list of non-negative integers, got {box_seeds!r}")
        self.alpha = alpha
        self.box_seeds = None if box_seeds is None else list(box_seeds)

    def before_run(self, trainer: "Trainer") -> None:
        if trainer.grid_size is None:
            raise ConfigError(f"MixToken needs a backbone with a token grid; "
                              f"{type(trainer.model_without_ddp.backbone).__name__} has none (remove hooks.mixtoken)")
        steps = trainer.max_epochs * trainer.iters_per_epoch
        if self.box_seeds is not None and (len(self.box_seeds) < steps or world_size() > 1):
            raise ConfigError(f"MixTokenHook box_seeds replays one process's run: it needs a seed for each of the "
                              f"{steps} steps ({trainer.max_epochs} epochs x {trainer.iters_per_epoch} iterations) "
                              f"and one process, got {len(self.box_seeds)} seeds and {world_size()} processes")

    def before_train_iter(self, trainer: "Trainer") -> None:
        seed = (self.box_seeds[trainer.global_step] if self.box_seeds is not None
                else derived_seed(trainer.seed, trainer.rank, trainer.global_step, self.STREAM))
        box = sample_mix_box(np.random.RandomState(seed), trainer.grid_size, self.alpha)
        trainer.mix_box = box if box[0] < box[2] and box[1] < box[3] else None
