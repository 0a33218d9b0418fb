"""The update of a training step: backward, gradient accumulation, AMP loss scaling, non-finite policy.

It belongs to the trainer (as mmengine's ``OptimWrapper``), not to a hook: no config key can remove it.
"""
from __future__ import annotations

from typing import Callable

import paddle

from ..utils.dist import all_reduce_sum, is_main
from ..utils.errors import TrainingStopped
from ..utils.logger import get_logger
from ..utils.registry import ConfigError, NonNegativeInt, PositiveInt


class OptimWrapper:
    """``update(loss, iteration)`` runs ``loss.backward()`` and, at the end of every group of
    ``accumulate_steps`` iterations, the optimizer step.

    With accumulation the loss of each iteration is divided by the size of its group, so the summed
    gradients are the mean over the effective batch ``batch_size x processes x accumulate_steps``; the
    last iterations of an epoch form a shorter group when fewer remain. Gradient clipping is the
    optimizer's (``optimizer.clip_grad``).

    Before each step the gradients (after the all-reduce, so every process decides alike) are checked:
    a step with a non-finite gradient is skipped with a warning (no update, and the EMA hook sees
    ``stepped`` False); after ``max_nonfinite_steps`` such steps in a row the run stops with
    ``TrainingStopped`` (``stopped_message`` names the newest checkpoint). Checkpoint hooks read
    ``nonfinite_steps`` and write nothing during such a streak. Under fp16 AMP the grad scaler skips
    overflowing steps itself; only a non-finite loss counts then.
    """

    def __init__(self, optimizer: paddle.optimizer.Optimizer, scaler: paddle.amp.GradScaler | None = None,
                 accumulate_steps: PositiveInt = 1, max_nonfinite_steps: NonNegativeInt = 10):
        if not isinstance(accumulate_steps, int) or accumulate_steps < 1:
            raise ConfigError(f"optim_wrapper.accumulate_steps must be an integer >= 1, got {accumulate_steps!r}")
        if not isinstance(max_nonfinite_steps, int) or max_nonfinite_steps < 0:
            raise ConfigError(f"optim_wrapper.max_nonfinite_steps must be an integer >= 0, got "
                              f"{max_nonfinite_steps!r}")
        self.optimizer = optimizer
        self.scaler = scaler
        self.accumulate_steps = accumulate_steps
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_steps = 0  # optimizer steps skipped in a row for a non-finite gradient or loss

    def update(self, loss: paddle.Tensor, iteration: int, iters_per_epoch: int, where: str,
               stopped_message: Callable[[], str]) -> bool:
        """Backward of ``loss`` (iteration ``iteration`` of the epoch); True when the optimizer stepped.
        ``where`` names the step in warnings."""
        group_start = iteration - iteration % self.accumulate_steps
        group_size = min(self.accumulate_steps, iters_per_epoch - group_start)
        scaled = loss / group_size if group_size > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if iteration + 1 != group_start + group_size:
            return False
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # unscales, and skips the update itself when a gradient overflows
            self.scaler.update()
            # overflows while the scale settles do not count; the loss is per process: agree on it
            finite = all_reduce_sum([0.0 if bool(paddle.isfinite(loss).all()) else 1.0])[0] == 0.0
        else:
            finite = gradients_finite(self.optimizer)
            if finite:
                self.optimizer.step()
        self.optimizer.clear_grad()
        self._count_nonfinite(finite, loss, where, stopped_message)
        return finite

    def _count_nonfinite(self, finite: bool, loss: paddle.Tensor, where: str,
                         stopped_message: Callable[[], str]) -> None:
        self.nonfinite_steps = 0 if finite else self.nonfinite_steps + 1
        if finite:
            return
        if self.nonfinite_steps <= self.max_nonfinite_steps:
            if is_main():
                what = "loss" if self.scaler is not None else "gradient"
                get_logger().warning(f"{where}: non-finite {what} (loss {float(loss):.4g} here); step skipped "
                                     f"({self.nonfinite_steps} in a row, the run stops after "
                                     f"{self.max_nonfinite_steps})")
            return
        raise TrainingStopped(
            f"training stopped at {where}: {self.nonfinite_steps} steps in a row had a non-finite loss or gradient "
            f"(optim_wrapper.max_nonfinite_steps={self.max_nonfinite_steps}). {stopped_message()} Lower the "
            f"learning rate or check the data, then continue with --resume.")


def gradients_finite(optimizer: paddle.optimizer.Optimizer) -> bool:
    """Whether every gradient of the optimizer's parameters is finite (one host sync)."""
    grads = [p.grad for p in optimizer._parameter_list if p.grad is not None]
    if not grads:
        return True
    return bool(paddle.stack([paddle.isfinite(g).all() for g in grads]).all())
