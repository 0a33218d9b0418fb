"""Backward pass and optimizer step (with AMP loss scaling and gradient accumulation)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import paddle

from ...utils.dist import all_reduce_sum, is_main
from ...utils.errors import TrainingStopped
from ...utils.logger import get_logger
from ...utils.registry import HOOKS, ConfigError
from ..checkpoint import list_checkpoints
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

    Before each step the gradients (after the all-reduce, so every process decides alike) are
    checked: a step with a non-finite gradient is skipped with a warning (no update, no EMA
    update); after ``max_nonfinite_steps`` such steps in a row the run stops with
    ``TrainingStopped``, and no checkpoint is written from the first of them on (``trainer.
    nonfinite_steps``). Under fp16 AMP the grad scaler skips overflowing steps itself; only a
    non-finite loss counts then.
    """

    priority = 20

    def __init__(self, accumulate_steps: int = 1, max_nonfinite_steps: int = 10):
        if not isinstance(accumulate_steps, int) or accumulate_steps < 1:
            raise ConfigError(f"OptimizerHook accumulate_steps must be an integer >= 1, got {accumulate_steps!r}")
        if not isinstance(max_nonfinite_steps, int) or max_nonfinite_steps < 0:
            raise ConfigError(f"OptimizerHook max_nonfinite_steps must be an integer >= 0, got {max_nonfinite_steps!r}")
        self.accumulate_steps = accumulate_steps
        self.max_nonfinite_steps = max_nonfinite_steps

    def before_run(self, trainer: "Trainer") -> None:
        trainer.accumulate_steps = self.accumulate_steps

    def after_train_iter(self, trainer: "Trainer") -> None:
        optimizer, scaler = trainer.optimizer, trainer.scaler
        group_start = trainer.iter - trainer.iter % self.accumulate_steps
        group_size = min(self.accumulate_steps, trainer.iters_per_epoch - group_start)
        loss = trainer.loss / group_size if group_size > 1 else trainer.loss
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if trainer.iter + 1 != group_start + group_size:
            trainer.optimizer_stepped = False
            return
        if scaler is not None:
            scaler.step(optimizer)  # unscales, and skips the update itself when a gradient overflows
            scaler.update()
            # overflows while the scale settles do not count; the loss is per process: agree on it
            finite = all_reduce_sum([0.0 if bool(paddle.isfinite(trainer.loss).all()) else 1.0])[0] == 0.0
        else:
            finite = gradients_finite(optimizer)
            if finite:
                optimizer.step()
        optimizer.clear_grad()
        trainer.optimizer_stepped = finite
        self._count_nonfinite(trainer, finite)

    def _count_nonfinite(self, trainer: "Trainer", finite: bool) -> None:
        trainer.nonfinite_steps = 0 if finite else trainer.nonfinite_steps + 1
        if finite:
            return
        where = f"epoch {trainer.epoch} iteration {trainer.iter + 1} (step {trainer.global_step})"
        if trainer.nonfinite_steps <= self.max_nonfinite_steps:
            if is_main():
                what = "loss" if trainer.scaler is not None else "gradient"
                get_logger().warning(f"{where}: non-finite {what} (loss {float(trainer.loss):.4g} here); step skipped "
                                     f"({trainer.nonfinite_steps} in a row, the run stops after "
                                     f"{self.max_nonfinite_steps})")
            return
        kept = list_checkpoints(trainer.output_dir)
        raise TrainingStopped(
            f"training stopped at {where}: {trainer.nonfinite_steps} steps in a row had a non-finite loss or "
            f"gradient (hooks.optimizer.max_nonfinite_steps={self.max_nonfinite_steps}). No checkpoint was written "
            f"since the first of them; the newest is {kept[-1] if kept else 'none'}. Lower the learning rate or "
            f"check the data, then continue with --resume.")

    def state_dict(self) -> dict:
        return {"accumulate_steps": self.accumulate_steps}

    def set_state_dict(self, state: dict) -> None:
        if state["accumulate_steps"] != self.accumulate_steps:
            raise ConfigError(f"the checkpoint was written with accumulate_steps={state['accumulate_steps']}, "
                              f"this run has {self.accumulate_steps}: resume with the same value")


def gradients_finite(optimizer: paddle.optimizer.Optimizer) -> bool:
    """Whether every gradient of the optimizer's parameters is finite (one host sync)."""
    grads = [p.grad for p in optimizer._parameter_list if p.grad is not None]
    if not grads:
        return True
    return bool(paddle.stack([paddle.isfinite(g).all() for g in grads]).all())
