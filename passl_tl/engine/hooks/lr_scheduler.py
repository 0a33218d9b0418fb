"""Sets the learning rate at the start of every epoch from the configured schedule."""
from __future__ import annotations

from ...utils.registry import HOOKS
from .hook import Hook


@HOOKS.register
class LRSchedulerHook(Hook):
    """Per-epoch LR steps, as the official recipe (warmup applies from epoch 0 on)."""

    priority = 5

    def before_train_epoch(self, trainer) -> None:
        trainer.optimizer.set_lr(trainer.lr_scheduler.lr_at(trainer.epoch))
