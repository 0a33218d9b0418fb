"""Backward pass and optimizer step (with AMP loss scaling and gradient accumulation)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...utils.registry import HOOKS
from .hook import Hook

if TYPE_CHECKING:
    from ..trainer import Trainer


@HOOKS.register
class OptimizerHook(Hook):
    """``loss.backward()`` every iteration; ``optimizer.step()`` every ``accumulate_steps``.

    With accumulation the loss is divided by ``accumulate_steps`` so the summed gradients are
    the mean over the effective batch ``batch_size x processes x accumulate_steps``; the last
    iterations of an epoch step even when fewer than ``accumulate_steps`` remain. Gradient
    clipping is the optimizer's (``optimizer.clip_grad``).
    """

    priority = 20

    def __init__(self, accumulate_steps: int = 1):
        if accumulate_steps < 1:
            raise ValueError(f"accumulate_steps must be >= 1, got {accumulate_steps}")
        self.accumulate_steps = accumulate_steps

    def before_run(self, trainer: "Trainer") -> None:
        trainer.accumulate_steps = self.accumulate_steps

    def after_train_iter(self, trainer: "Trainer") -> None:
        optimizer, scaler = trainer.optimizer, trainer.scaler
        loss = trainer.loss / self.accumulate_steps if self.accumulate_steps > 1 else trainer.loss
        (scaler.scale(loss) if scaler is not None else loss).backward()
        done = trainer.iter + 1
        trainer.optimizer_stepped = done % self.accumulate_steps == 0 or done == trainer.iters_per_epoch
        if not trainer.optimizer_stepped:
            return
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.clear_grad()
