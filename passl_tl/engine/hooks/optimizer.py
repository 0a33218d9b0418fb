"""Backward pass and optimizer step (with AMP loss scaling and gradient accumulation)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...utils.registry import HOOKS, ConfigError
from .hook import Hook

if TYPE_CHECKING:
    from ..trainer import Trainer


@HOOKS.register
class OptimizerHook(Hook):
    """``loss.backward()`` every iteration; ``optimizer.step()`` every ``accumulate_steps``.

    With accumulation the loss of each iteration is divided by the size of its group, so the
    summed gradients are the mean over the effective batch ``batch_size x processes x
    accumulate_steps``; the last iterations of an epoch form a shorter group when fewer remain.
    Gradient clipping is the optimizer's (``optimizer.clip_grad``).
    """

    priority = 20

    def __init__(self, accumulate_steps: int = 1):
        if not isinstance(accumulate_steps, int) or accumulate_steps < 1:
            raise ConfigError(f"OptimizerHook accumulate_steps must be an integer >= 1, got {accumulate_steps!r}")
        self.accumulate_steps = accumulate_steps

    def before_run(self, trainer: "Trainer") -> None:
        trainer.accumulate_steps = self.accumulate_steps

    def after_train_iter(self, trainer: "Trainer") -> None:
        optimizer, scaler = trainer.optimizer, trainer.scaler
        group_start = trainer.iter - trainer.iter % self.accumulate_steps
        group_size = min(self.accumulate_steps, trainer.iters_per_epoch - group_start)
        loss = trainer.loss / group_size if group_size > 1 else trainer.loss
        (scaler.scale(loss) if scaler is not None else loss).backward()
        trainer.optimizer_stepped = trainer.iter + 1 == group_start + group_size
        if not trainer.optimizer_stepped:
            return
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.clear_grad()

    def state_dict(self) -> dict:
        return {"accumulate_steps": self.accumulate_steps}

    def set_state_dict(self, state: dict) -> None:
        if state["accumulate_steps"] != self.accumulate_steps:
            raise ConfigError(f"the checkpoint was written with accumulate_steps={state['accumulate_steps']}, "
                              f"this run has {self.accumulate_steps}: resume with the same value")
