"""Sets the learning rate at the start of every epoch from the configured schedule."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...utils.registry import HOOKS
from .hook import Hook

if TYPE_CHECKING:
    from ..trainer import Trainer


@HOOKS.register
class LRSchedulerHook(Hook):
    """Per-epoch LR steps, as the official recipe (warmup applies from epoch 0 on)."""

    priority = 5

    def before_train_epoch(self, trainer: "Trainer") -> None:
        trainer.optimizer.set_lr(trainer.lr_scheduler.lr_at(trainer.epoch))
