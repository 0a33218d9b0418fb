"""Training logs: stdout + ``log.txt`` and VisualDL scalars (loss, lr, img/s, top-1/top-5)."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import paddle

from ...datasets.faults import REPORT_FILES, read_fault_report
from ...utils.dist import all_reduce_sum, is_main, world_size
from ...utils.logger import get_logger
from ...utils.progress import format_duration
from ...utils.registry import HOOKS, PositiveInt
from .hook import Hook

if TYPE_CHECKING:
    from ...batch.pipeline import Batch
    from ..trainer import StepOutputs, Trainer


def weights_fingerprint(model: paddle.nn.Layer) -> float:
    """Sum of |w| over all trainable parameters, in float64."""
    return float(sum(p.astype("float64").abs().sum() for p in model.parameters() if not p.stop_gradient))


def trainable_parameters(model: paddle.nn.Layer) -> int:
    """Paddle keeps BatchNorm statistics as parameters too, with ``stop_gradient``: those are not counted."""
    return sum(int(p.size) for p in model.parameters() if not p.stop_gradient)


def describe_images(loader: Any) -> str:
    """``600 images`` of a loader's dataset (``5 fixed batches of 16`` for one without a dataset)."""
    if loader.dataset is None:
        return f"{len(loader)} fixed batches of {loader.batch_size}"
    return f"{len(loader.dataset)} images"


def start_banner(trainer: "Trainer") -> str:
    """The run's first line: what it trains, on what, how and for how long."""
    model = trainer.model_without_ddp
    parts = "/".join(type(getattr(model, part)).__name__ for part in ("backbone", "head") if hasattr(model, part))
    procs, batch = world_size(), trainer.train_loader.batch_sampler.batch_size
    accumulate = trainer.optim_wrapper.accumulate_steps
    val = describe_images(trainer.val_loader) if trainer.val_loader is not None else "none"
    return (f"training {trainer.cfg['model'].get('name')} ({parts + ', ' if parts else ''}"
            f"{trainable_parameters(model) / 1e6:.2f}M trainable parameters) for {trainer.max_epochs} epochs of "
            f"{trainer.iters_per_epoch} iterations on {describe_images(trainer.train_loader)} (validation: {val}); "
            f"batch {batch} x {procs} process{'es' if procs > 1 else ''} ({trainer.cfg['device']}) x {accumulate} "
            f"accumulation step{'s' if accumulate > 1 else ''} = {batch * procs * accumulate} images per optimizer "
            f"step; outputs in {trainer.output_dir}")


@HOOKS.register
class LoggerHook(Hook):
    """A start banner (:func:`start_banner`); every ``interval`` iterations the loss, LR, images/s and the time
    left in the epoch and in the run; the metrics after each evaluation."""

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
        self._epoch_start = time.time()
        self._epoch_iters = 0  # iterations this process ran in the current epoch
        self._epoch_end: float | None = None
        self._between_epochs: list[float] = []  # seconds from an epoch's last step to the next one's start

    def before_run(self, trainer: "Trainer") -> None:
        if self.visualdl and is_main():
            from visualdl import LogWriter
            self.writer = LogWriter(logdir=os.path.join(trainer.output_dir, "vdl"))
        if is_main():
            get_logger().info(start_banner(trainer))

    def before_train_epoch(self, trainer: "Trainer") -> None:
        self._epoch_start = time.time()
        if self._epoch_end is not None:  # the last epoch's evaluation and checkpoint
            self._between_epochs.append(self._epoch_start - self._epoch_end)
        self._epoch_iters = 0
        self._reset()

    def after_train_iter(self, trainer: "Trainer", batch: "Batch", outputs: "StepOutputs") -> None:
        self._loss_sum = self._loss_sum + outputs.loss.detach().astype("float64")  # no host sync per step
        self._loss_count += 1
        self._images += batch.size
        self._epoch_iters += 1
        done, per_epoch = trainer.iter + 1, trainer.iters_per_epoch
        if done == per_epoch:
            self._epoch_end = time.time()
        if done % self.interval and done != per_epoch:
            return
        loss_sum, count, images = all_reduce_sum([float(self._loss_sum), self._loss_count, self._images])
        elapsed = time.time() - self._tic
        loss, rate, lr = loss_sum / count, images / max(elapsed, 1e-9), trainer.optimizer.get_lr()
        step, steps = trainer.epoch * per_epoch + done, trainer.max_epochs * per_epoch
        get_logger().info(
            f"epoch {trainer.epoch} [{done}/{per_epoch}] loss {loss:.4f} lr {lr:.3e} {rate:.1f} img/s "
            f"(x{world_size()} procs) | step {step}/{steps} of {trainer.max_epochs} epochs | ETA "
            f"{self._eta(trainer, done)}")
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

    def _eta(self, trainer: "Trainer", done: int) -> str:
        """``epoch H:MM:SS, run H:MM:SS``: the steps left at this epoch's mean step time, plus for the run each
        epoch end left at the mean time the evaluations and checkpoints took so far (none before the first)."""
        per_step = (time.time() - self._epoch_start) / self._epoch_iters
        epoch_left = (trainer.iters_per_epoch - done) * per_step
        epochs_after = trainer.max_epochs - trainer.epoch - 1
        between = sum(self._between_epochs) / len(self._between_epochs) if self._between_epochs else 0.0
        run_left = epoch_left + epochs_after * trainer.iters_per_epoch * per_step + (epochs_after + 1) * between
        return f"epoch {format_duration(epoch_left)}, run {format_duration(run_left)}"

    def _reset(self) -> None:
        self._loss_sum, self._loss_count, self._images = 0.0, 0, 0
        self._tic = time.time()
