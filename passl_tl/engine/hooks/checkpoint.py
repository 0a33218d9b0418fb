"""Saves resumable checkpoints (keep the last K), the best weights and the final weights."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ...utils.dist import is_main
from ...utils.errors import TrainingStopped
from ...utils.logger import get_logger
from ...utils.registry import HOOKS, ConfigError, NonNegativeInt, PositiveInt
from ..checkpoint import (checkpoint_name, first_nonfinite, list_checkpoints, remove_checkpoint, remove_temporaries,
                          save_atomic)
from .hook import Hook

if TYPE_CHECKING:
    from ...batch.pipeline import Batch
    from ..trainer import StepOutputs, Trainer

BEST = "best.pdparams"              # the tracked weights: what the reported best top-1 was measured on
BEST_MODEL = "best_model.pdparams"  # the raw model of that epoch: what fine-tuning starts from
BEST_EMA = "best_ema.pdparams"      # the EMA of that epoch


def best_files(has_ema: bool) -> list[str]:
    """The files a run keeps for its best epoch: without an EMA the raw model is the tracked one,
    so ``best.pdparams`` alone."""
    return [BEST, BEST_MODEL, BEST_EMA] if has_ema else [BEST]


@HOOKS.register
class CheckpointHook(Hook):
    """Every ``interval`` epochs (and every ``interval_iters`` iterations if > 0) writes a full
    training state; keeps the newest ``keep_last`` (0: all); writes the best weights when the tracked top-1
    improves and ``final.pdparams`` (plus ``final_ema.pdparams``) at the end.

    ``best.pdparams`` is the tracked weights (the EMA's unless ``EvaluateHook(track="model")`` or no
    EMA). With an EMA the best epoch's raw model and EMA also get their own files, because the
    official fine-tuning starts from the raw model of the checkpoint whose EMA scored best (timm's
    ``model_best`` keeps both; ``--finetune`` without ``--model-ema`` loads ``state_dict``)."""

    priority = 60

    def __init__(self, interval: PositiveInt = 1, interval_iters: NonNegativeInt = 0, keep_last: NonNegativeInt = 5,
                 save_best: bool = True):
        self.interval = interval
        self.interval_iters = interval_iters
        self.keep_last = keep_last
        self.save_best = save_best
        self.best_top1 = -1.0
        self.check_best_files = False  # after a resume: are the best weights of best_top1 in output_dir?

    def before_run(self, trainer: "Trainer") -> None:
        accumulate_steps = trainer.optim_wrapper.accumulate_steps
        if self.interval_iters % accumulate_steps:
            raise ConfigError(f"CheckpointHook interval_iters={self.interval_iters} must be a multiple of "
                              f"optim_wrapper.accumulate_steps={accumulate_steps} (accumulated gradients are "
                              f"not saved)")
        if is_main():
            for path in remove_temporaries(trainer.output_dir):
                get_logger().warning(f"removed {path}, left by an interrupted checkpoint write")

    def after_train_iter(self, trainer: "Trainer", batch: "Batch", outputs: "StepOutputs") -> None:
        done = trainer.iter + 1
        if self.interval_iters and done % self.interval_iters == 0 and done < trainer.iters_per_epoch:
            self._save(trainer, trainer.epoch, done)

    def before_train_epoch(self, trainer: "Trainer") -> None:
        if not self.check_best_files:
            return
        self.check_best_files = False
        missing = [name for name in best_files(trainer.ema is not None)
                   if not os.path.exists(os.path.join(trainer.output_dir, name))]
        if missing and is_main():
            get_logger().warning(f"resumed with a best top-1 of {self.best_top1:.3f}, but {trainer.output_dir} has "
                                 f"no {', '.join(missing)}: the best weights are written only when top-1 exceeds "
                                 f"{self.best_top1:.3f}")

    def after_train_epoch(self, trainer: "Trainer") -> None:
        last = trainer.epoch + 1 == trainer.max_epochs
        if self.save_best and trainer.metrics and trainer.metrics.get("top1", -1.0) > self.best_top1:
            self.best_top1 = trainer.metrics["top1"]
            if is_main():
                self._save_best(trainer)
        if (trainer.epoch + 1) % self.interval == 0 or last:
            self._save(trainer, trainer.epoch, trainer.iters_per_epoch)

    def before_stop(self, trainer: "Trainer", iters_done: int) -> None:
        if not os.path.exists(os.path.join(trainer.output_dir, checkpoint_name(trainer.epoch, iters_done))):
            self._save(trainer, trainer.epoch, iters_done)

    def after_run(self, trainer: "Trainer") -> None:
        if not is_main():
            return
        self._refuse_nonfinite(trainer, "final.pdparams")
        save_atomic(trainer.model_without_ddp.state_dict(), os.path.join(trainer.output_dir, "final.pdparams"))
        if trainer.ema is None:
            get_logger().info("wrote final.pdparams (raw model weights; no EMA in this run)")
            return
        save_atomic(trainer.ema.state_dict(), os.path.join(trainer.output_dir, "final_ema.pdparams"))
        get_logger().info("wrote final.pdparams (raw model weights) and final_ema.pdparams (EMA weights)")

    def _save_best(self, trainer: "Trainer") -> None:
        """Writes the new best epoch's files and logs which weights each one holds."""
        out, tracked = trainer.output_dir, trainer.metrics["tracked"]
        self._refuse_nonfinite(trainer, BEST)
        if trainer.ema is None:
            save_atomic(trainer.model_without_ddp.state_dict(), os.path.join(out, BEST))
            get_logger().info(f"new best top-1 {self.best_top1:.3f} (tracked: raw model; no EMA) at epoch "
                              f"{trainer.epoch}: {BEST} holds the raw model weights")
            return
        save_atomic(trainer.model_without_ddp.state_dict(), os.path.join(out, BEST_MODEL))
        save_atomic(trainer.ema.state_dict(), os.path.join(out, BEST_EMA))
        save_atomic(trainer.best_model().state_dict(), os.path.join(out, BEST))
        if tracked == "ema":
            kind = f"tracked: EMA weights; raw model {trainer.metrics['model/top1']:.3f}"
            where = f"{BEST} and {BEST_EMA} hold the EMA weights, {BEST_MODEL} the raw model"
        else:
            kind = f"tracked: raw model; EMA weights {trainer.metrics['ema/top1']:.3f}"
            where = f"{BEST} and {BEST_MODEL} hold the raw model weights, {BEST_EMA} the EMA"
        get_logger().info(f"new best top-1 {self.best_top1:.3f} ({kind}) at epoch {trainer.epoch}: {where} weights")

    def _refuse_nonfinite(self, trainer: "Trainer", name: str) -> None:
        """Weights are never written from a non-finite state: stop, naming the tensor and the newest checkpoint."""
        for what, layer in (("model", trainer.model_without_ddp), ("EMA", trainer.ema)):
            bad = first_nonfinite(layer.state_dict()) if layer is not None else None
            if bad:
                kept = list_checkpoints(trainer.output_dir)
                raise TrainingStopped(f"not writing {name}: the {what}'s {bad} holds non-finite values; the newest "
                                      f"checkpoint is {kept[-1] if kept else 'none'}")

    def _save(self, trainer, epoch: int, iters_done: int) -> None:
        if not is_main():
            return
        if trainer.optim_wrapper.nonfinite_steps:
            get_logger().warning(f"not saving a checkpoint at epoch {epoch} iteration {iters_done}: the last "
                                 f"{trainer.optim_wrapper.nonfinite_steps} steps had non-finite gradients")
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
        self.check_best_files = self.save_best and self.best_top1 >= 0


