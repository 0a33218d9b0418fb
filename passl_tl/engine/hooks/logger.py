"""Training logs: stdout + ``log.txt`` and VisualDL scalars (loss, lr, img/s, top-1/top-5)."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import paddle

from ...datasets.faults import REPORT_FILES, read_fault_report
from ...utils.dist import all_reduce_sum, is_main, world_size
from ...utils.logger import get_logger
from ...utils.registry import HOOKS, PositiveInt
from .hook import Hook

if TYPE_CHECKING:
    from ...batch.pipeline import Batch
    from ..trainer import StepOutputs, Trainer


def weights_fingerprint(model: paddle.nn.Layer) -> float:
    """Sum of |w| over all trainable parameters, in float64."""
    return float(sum(p.astype("float64").abs().sum() for p in model.parameters() if not p.stop_gradient))


@HOOKS.register
class LoggerHook(Hook):
    """Logs every ``interval`` iterations and after each evaluation."""

    priority = 40

    def __init__(self, interval: PositiveInt = 50, visualdl: bool = True):
        self.interval = interval
        self.visualdl = visualdl
        self.writer = None
        self._loss_sum = 0.0
        self._loss_count = 0
        self._images = 0
        self._tic = time.time()
        self._fault_counts: dict[str, int] = {}

    def before_run(self, trainer: "Trainer") -> None:
        if self.visualdl and is_main():
            from visualdl import LogWriter
            self.writer = LogWriter(logdir=os.path.join(trainer.output_dir, "vdl"))

    def before_train_epoch(self, trainer: "Trainer") -> None:
        self._reset()

    def after_train_iter(self, trainer: "Trainer", batch: "Batch", outputs: "StepOutputs") -> None:
        self._loss_sum = self._loss_sum + outputs.loss.detach().astype("float64")  # no host sync per step
        self._loss_count += 1
        self._images += batch.size
        done = trainer.iter + 1
        if done % self.interval and done != trainer.iters_per_epoch:
            return
        loss_sum, count, images = all_reduce_sum([float(self._loss_sum), self._loss_count, self._images])
        elapsed = time.time() - self._tic
        loss, rate, lr = loss_sum / count, images / max(elapsed, 1e-9), trainer.optimizer.get_lr()
        get_logger().info(
            f"epoch {trainer.epoch} [{done}/{trainer.iters_per_epoch}] loss {loss:.4f} lr {lr:.3e} "
            f"{rate:.1f} img/s (x{world_size()} procs)")
        self._scalar("train/loss", loss, trainer.global_step)
        self._scalar("train/lr", lr, trainer.global_step)
        self._scalar("train/img_per_s", rate, trainer.global_step)
        self._reset()

    def after_train_epoch(self, trainer: "Trainer") -> None:
        self._log_data_faults(trainer)
        if not trainer.metrics:
            return
        parts = [f"{k} {v:.3f}" for k, v in trainer.metrics.items() if k.endswith(("top1", "top5")) and "/" in k]
        count = trainer.metrics.get("model/count", 0)
        get_logger().info(f"epoch {trainer.epoch} eval ({count} images): " + ", ".join(parts))
        for key, value in trainer.metrics.items():
            if "/" in key:
                self._scalar(f"val/{key}", value, trainer.epoch)

    def after_run(self, trainer: "Trainer") -> None:
        # Every process logs it: equal values show the replicas stayed in sync.
        get_logger().info(f"weights fingerprint {weights_fingerprint(trainer.model_without_ddp):.10e}")
        if self.writer is not None:
            self.writer.close()

    def _log_data_faults(self, trainer: "Trainer") -> None:
        """Counts of the inputs the datasets replaced so far (``bad_image: skip``, label fallbacks), when they grow."""
        if not is_main():
            return
        report = read_fault_report(trainer.output_dir)
        counts = {kind: len(paths) for kind, paths in report.items()}
        if any(counts.values()) and counts != self._fault_counts:
            get_logger().warning(f"epoch {trainer.epoch} data faults so far: " + ", ".join(
                f"{n} {kind.replace('_', ' ')} (listed in {os.path.join(trainer.output_dir, REPORT_FILES[kind])})"
                for kind, n in counts.items() if n))
        self._fault_counts = counts

    def _scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag=tag, value=value, step=step)

    def _reset(self) -> None:
        self._loss_sum, self._loss_count, self._images = 0.0, 0, 0
        self._tic = time.time()
