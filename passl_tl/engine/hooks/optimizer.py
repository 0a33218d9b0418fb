"""Backward pass and optimizer step (with AMP loss scaling)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...utils.registry import HOOKS
from .hook import Hook

if TYPE_CHECKING:
    from ..trainer import Trainer


@HOOKS.register
class OptimizerHook(Hook):
    """``loss.backward()`` (scaled when a GradScaler is in use), ``optimizer.step()``, clear grads.
    Gradient clipping is the optimizer's (``optimizer.clip_grad``)."""

    priority = 20

    def after_train_iter(self, trainer: "Trainer") -> None:
        optimizer, scaler = trainer.optimizer, trainer.scaler
        if scaler is not None:
            scaler.scale(trainer.loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            trainer.loss.backward()
            optimizer.step()
        optimizer.clear_grad()
