"""Backward pass and optimizer step (with AMP loss scaling and optional gradient clipping)."""
from __future__ import annotations

import paddle

from ...utils.registry import HOOKS
from .hook import Hook


@HOOKS.register
class OptimizerHook(Hook):
    """``loss.backward()``, optional clip of the global gradient norm, ``optimizer.step()``."""

    priority = 20

    def __init__(self, clip_grad: float | None = None):
        self.clip_grad = clip_grad

    def before_run(self, trainer) -> None:
        if self.clip_grad:
            trainer.optimizer._grad_clip = paddle.nn.ClipGradByGlobalNorm(self.clip_grad)

    def after_train_iter(self, trainer) -> None:
        optimizer, scaler = trainer.optimizer, trainer.scaler
        if scaler is not None:
            scaler.scale(trainer.loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            trainer.loss.backward()
            optimizer.step()
        optimizer.clear_grad()
