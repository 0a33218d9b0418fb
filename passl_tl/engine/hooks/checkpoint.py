"""Saves resumable checkpoints (keep the last K), the best weights and the final weights."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ...utils.dist import is_main
from ...utils.logger import get_logger
from ...utils.registry import HOOKS, ConfigError
from ..checkpoint import checkpoint_name, list_checkpoints, remove_checkpoint, remove_temporaries, save_atomic
from .hook import Hook

if TYPE_CHECKING:
    from ..trainer import Trainer


@HOOKS.register
class CheckpointHook(Hook):
    """Every ``interval`` epochs (and every ``interval_iters`` iterations if > 0) writes a full
    training state; keeps the newest ``keep_last``; writes ``best.pdparams`` when the tracked
    top-1 improves and ``final.pdparams`` (plus ``final_ema.pdparams``) at the end."""

    priority = 60

    def __init__(self, interval: int = 1, interval_iters: int = 0, keep_last: int = 5, save_best: bool = True):
        self.interval = interval
        self.interval_iters = interval_iters
        self.keep_last = keep_last
        self.save_best = save_best
        self.best_top1 = -1.0

    def before_run(self, trainer: "Trainer") -> None:
        if self.interval_iters % trainer.accumulate_steps:
            raise ConfigError(f"CheckpointHook interval_iters={self.interval_iters} must be a multiple of "
                              f"the optimizer's accumulate_steps={trainer.accumulate_steps} (accumulated "
                              f"gradients are not saved)")
        if is_main():
            for path in remove_temporaries(trainer.output_dir):
                get_logger().warning(f"removed {path}, left by an interrupted checkpoint write")

    def after_train_iter(self, trainer: "Trainer") -> None:
        done = trainer.iter + 1
        if self.interval_iters and done % self.interval_iters == 0 and done < trainer.iters_per_epoch:
            self._save(trainer, trainer.epoch, done)

    def after_train_epoch(self, trainer: "Trainer") -> None:
        last = trainer.epoch + 1 == trainer.max_epochs
        if self.save_best and trainer.metrics and trainer.metrics.get("top1", -1.0) > self.best_top1:
            self.best_top1 = trainer.metrics["top1"]
            if is_main():
                save_atomic(trainer.best_model().state_dict(), os.path.join(trainer.output_dir, "best.pdparams"))
                get_logger().info(f"new best top-1 {self.best_top1:.3f} at epoch {trainer.epoch}")
        if (trainer.epoch + 1) % self.interval == 0 or last:
            self._save(trainer, trainer.epoch, trainer.iters_per_epoch)

    def after_run(self, trainer: "Trainer") -> None:
        if not is_main():
            return
        save_atomic(trainer.model_without_ddp.state_dict(), os.path.join(trainer.output_dir, "final.pdparams"))
        if trainer.ema is not None:
            save_atomic(trainer.ema.state_dict(), os.path.join(trainer.output_dir, "final_ema.pdparams"))

    def _save(self, trainer, epoch: int, iters_done: int) -> None:
        if not is_main():
            return
        if trainer.nonfinite_steps:
            get_logger().warning(f"not saving a checkpoint at epoch {epoch} iteration {iters_done}: the last "
                                 f"{trainer.nonfinite_steps} steps had non-finite gradients")
            return
        path = os.path.join(trainer.output_dir, checkpoint_name(epoch, iters_done))
        save_atomic(trainer.training_state(epoch, iters_done), path, checksum=True)
        get_logger().info(f"saved checkpoint {path}")
        for old in list_checkpoints(trainer.output_dir)[:-self.keep_last] if self.keep_last > 0 else []:
            remove_checkpoint(old)

    def state_dict(self) -> dict:
        return {"best_top1": self.best_top1}

    def set_state_dict(self, state: dict) -> None:
        self.best_top1 = state["best_top1"]


