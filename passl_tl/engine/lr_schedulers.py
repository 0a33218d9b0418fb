"""Learning-rate schedules, stepped once per epoch as in the official recipe."""
from __future__ import annotations

import math

from ..utils.registry import LR_SCHEDULERS, NonNegativeFloat, NonNegativeInt


@LR_SCHEDULERS.register
class CosineWarmup:
    """timm's ``CosineLRScheduler`` as the LV-ViT recipe uses it (one cycle, per-epoch steps).

    Epoch ``t < warmup_epochs``: linear from ``warmup_lr`` towards ``base_lr`` (epoch 0 runs
    at ``warmup_lr``); then cosine from ``base_lr`` to ``min_lr`` over ``epochs`` (counted from
    0, warmup included); the ``cooldown_epochs`` after that run at ``min_lr``.
    """

    def __init__(self, base_lr: float, epochs: int, warmup_epochs: NonNegativeInt = 5,
                 warmup_lr: NonNegativeFloat = 1e-6, min_lr: NonNegativeFloat = 1e-5,
                 cooldown_epochs: NonNegativeInt = 10):
        self.base_lr = base_lr
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.min_lr = min_lr
        self.cooldown_epochs = cooldown_epochs

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.cooldown_epochs

    def lr_at(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return self.warmup_lr + epoch * (self.base_lr - self.warmup_lr) / self.warmup_epochs
        if epoch >= self.epochs:
            return self.min_lr
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * epoch / self.epochs))

