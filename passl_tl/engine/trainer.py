"""The trainer: the loop, the batch pipeline and the training step; hooks act around the step."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from typing import Any, Callable, Mapping

import paddle

from ..batch import mixup, soft_targets, teacher  # noqa: F401  (registers the batch stages)
from ..batch.pipeline import Batch, BatchPipeline, Step
from ..models import set_state_strict
from ..token_labels import mixtoken, targets  # noqa: F401  (registers the batch stages)
from ..utils.config import Config, ConfigError
from ..utils.dist import all_reduce_sum, barrier, end_without_report, is_main, rank, world_size
from ..utils.errors import Preempted
from ..utils.logger import get_logger
from ..utils.registry import DATASETS, HOOKS, LR_SCHEDULERS, OPTIMIZERS, TRANSFORMS, check_arguments
from ..utils.seeding import derived_seed
from .checkpoint import (agreed_latest_checkpoint, list_checkpoints, load_checkpoint, portable_optimizer_state,
                         restore_optimizer_state)
from .data import batches, build_dataset, build_loader, check_data_matches_model
from .fixed_batches import FixedBatches
from .hooks.hook import Hook
from .hooks.lr_scheduler import LRSchedulerHook
from .optim_wrapper import OptimWrapper
from .preemption import StopSignals
from .sample_order import check_same_sample_order, sample_order
from .step_forward import build_step_forward, run_step_forward

AMP_DTYPES = ("float16", "bfloat16")


def amp_context_from(cfg: Mapping[str, Any]) -> Callable | None:
    """``auto_cast`` for the config's ``amp`` section (O1: white-listed ops in low precision)."""
    if not cfg.get("enable"):
        return None
    if cfg["dtype"] not in AMP_DTYPES or cfg["level"] != "O1":
        raise ConfigError(f"amp supports level 'O1' with dtype {' or '.join(AMP_DTYPES)}, "
                          f"got level {cfg['level']!r} dtype {cfg['dtype']!r}")
    return functools.partial(paddle.amp.auto_cast, enable=True, level="O1", dtype=cfg["dtype"])


def build_lr_scheduler(cfg: Config) -> Any:
    """The config's LR schedule; its ``total_epochs`` (cooldown included) is how long the run trains."""
    return LR_SCHEDULERS.build(cfg["lr_scheduler"], f"lr_scheduler of {cfg.source}", base_lr=cfg["optimizer"]["lr"],
                               epochs=cfg["epochs"])


# Components that were hooks before the step and the batch became the trainer's: where they went.
MOVED_HOOKS = {"OptimizerHook": "optim_wrapper (accumulate_steps, max_nonfinite_steps)",
               "MixTokenHook": "batch.mixtoken ({name: MixToken})", "MixupHook": "batch.mixup ({name: Mixup})",
               "DistillationHook": "batch.teacher ({name: Teacher, teacher: ..., weights: ...})"}


@dataclasses.dataclass(frozen=True)
class StepOutputs:
    """What one training step gives the hooks: the loss, the model's training outputs, and whether the
    optimizer stepped (False inside an accumulation group or when a non-finite step was skipped)."""

    loss: paddle.Tensor
    outputs: Any
    stepped: bool


class Trainer:
    """The loop: for every loader batch, the batch pipeline builds the :class:`Batch` (targets, Mixup/CutMix,
    teacher, MixToken), :meth:`train_step` runs forward, loss and the update (:class:`OptimWrapper`), and
    hooks act around it (LR, EMA, logging, evaluation, checkpoints), seeing the batch and the step's
    outputs. Hook order among themselves is their ``priority``; nothing a hook does changes the step."""

    def __init__(self, cfg: Config, model: paddle.nn.Layer, train_loader: paddle.io.DataLoader | FixedBatches,
                 val_loader: paddle.io.DataLoader | None, optim_wrapper: OptimWrapper, lr_scheduler: Any,
                 hooks: Mapping[str, Hook], batch_pipeline: BatchPipeline):
        self.cfg = cfg
        self.seed = int(cfg["seed"])
        self.rank = rank()
        self.output_dir = cfg["output_dir"]
        self.model_without_ddp = model
        self.train_loader, self.val_loader = train_loader, val_loader
        self.optim_wrapper, self.lr_scheduler = optim_wrapper, lr_scheduler
        self.amp_context = amp_context_from(cfg["amp"])
        self.compiled = cfg["compile"]
        step_forward = build_step_forward(model, self.amp_context, self.compiled)
        self.step_forward = paddle.DataParallel(step_forward) if world_size() > 1 else step_forward
        self.hooks = dict(sorted(hooks.items(), key=lambda item: item[1].priority))
        if not any(isinstance(h, LRSchedulerHook) for h in self.hooks.values()) and is_main():
            get_logger().warning("no LRSchedulerHook configured: the learning rate stays at the optimizer's lr")
        self.max_epochs = lr_scheduler.total_epochs
        self.iters_per_epoch = len(train_loader.batch_sampler)
        self.batch_pipeline = batch_pipeline  # bound to the model (see from_config)
        mixtoken = batch_pipeline.get("mixtoken")
        if mixtoken is not None:
            mixtoken.check_steps(self.max_epochs * self.iters_per_epoch)
        self.mixes_tokens = mixtoken is not None
        self.ema = None
        self.epoch = self.iter = self.global_step = 0
        self.start_epoch = self.start_iter = 0
        self.metrics: dict[str, Any] = {}

    @property
    def optimizer(self) -> paddle.optimizer.Optimizer:
        return self.optim_wrapper.optimizer

    @classmethod
    def from_config(cls, cfg: Config, model: paddle.nn.Layer,
                    train_loader: paddle.io.DataLoader | FixedBatches | None = None) -> "Trainer":
        """Everything from ``cfg``; ``train_loader`` (e.g. :class:`FixedBatches`) replaces ``data.train``."""
        data = cfg["data"]
        train_set = None
        if train_loader is None:
            train_set = build_dataset(data["train"], f"data.train of {cfg.source}", cfg["seed"])
            train_loader = build_loader(train_set, data["batch_size"], data["num_workers"], True, cfg["seed"],
                                        data["repeated_augmentation"])
        val_set = build_dataset(data["val"], f"data.val of {cfg.source}", cfg["seed"]) if data["val"] else None
        val_loader = (build_loader(val_set, data["val_batch_size"], data["num_workers"], False, cfg["seed"])
                      if val_set is not None else None)
        batch_pipeline = BatchPipeline.from_config(cfg["batch"], cfg.source).bind(
            model, amp_context_from(cfg["amp"]))
        check_data_matches_model(model, train_set, val_set, batch_pipeline.get("target"), cfg.source)
        optimizer = OPTIMIZERS.build(cfg["optimizer"], f"optimizer of {cfg.source}", model=model)
        lr_scheduler = build_lr_scheduler(cfg)
        amp = cfg["amp"]
        scaler = (paddle.amp.GradScaler(init_loss_scaling=amp["init_loss_scaling"])
                  if amp["enable"] and amp["dtype"] == "float16" else None)
        optim_wrapper = OptimWrapper(optimizer, scaler, **cfg["optim_wrapper"])
        hooks = {key: HOOKS.build(h, f"hooks.{key} of {cfg.source}") for key, h in cfg["hooks"].items() if h}
        return cls(cfg, model, train_loader, val_loader, optim_wrapper, lr_scheduler, hooks, batch_pipeline)

    @staticmethod
    def check_config(cfg: Config, evaluate_only: bool = False) -> None:
        """The registry checks of ``from_config`` (every component exists and takes its keys) without
        building anything, so a bad key fails before the model is built; ``evaluate_only``: data.val only."""
        data = cfg["data"]
        for split in ("val",) if evaluate_only else ("train", "val"):
            if data[split]:
                where = f"data.{split} of {cfg.source}"
                DATASETS.check(data[split], where, supplied=["seed"])
                for i, spec in enumerate(data[split].get("transforms") or []):
                    TRANSFORMS.check(spec, f"{where} transforms[{i}]")
        if evaluate_only:
            return
        BatchPipeline.check_config(cfg["batch"], cfg.source)
        OPTIMIZERS.check(cfg["optimizer"], f"optimizer of {cfg.source}", supplied=["model"])
        LR_SCHEDULERS.check(cfg["lr_scheduler"], f"lr_scheduler of {cfg.source}", supplied=["base_lr", "epochs"])
        if not isinstance(cfg["optim_wrapper"], Mapping):  # the step cannot be switched off
            raise ConfigError(f"optim_wrapper of {cfg.source} must be a mapping (accumulate_steps, "
                              f"max_nonfinite_steps), got {cfg['optim_wrapper']!r}")
        check_arguments(OptimWrapper, cfg["optim_wrapper"], f"optim_wrapper of {cfg.source}",
                        supplied={"optimizer": None})
        for key, hook in cfg["hooks"].items():
            if hook and hook.get("name") in MOVED_HOOKS:
                raise ConfigError(f"hooks.{key} ({hook['name']}) in {cfg.source}: the training step and the batch "
                                  f"are the trainer's, not hooks; configure {MOVED_HOOKS[hook['name']]} instead")
            if hook:
                HOOKS.check(hook, f"hooks.{key} of {cfg.source}")

    # ----------------------------------------------------------------- loop
    def train(self, resume: str | None = None) -> dict[str, Any]:
        """Run to the end, or until a SIGTERM/SIGINT: then stop at the next step boundary (every process at
        the same one), save a checkpoint there and raise :class:`Preempted`."""
        os.makedirs(self.output_dir, exist_ok=True)
        for loader in (self.train_loader, self.val_loader):  # where datasets list the inputs they replace
            if loader is not None and hasattr(loader.dataset, "set_report_dir"):
                loader.dataset.set_report_dir(self.output_dir)
        with StopSignals() as signals:
            self._call("before_run")
            if resume:
                self.resume(resume)
            for epoch in range(self.start_epoch, self.max_epochs):
                self.epoch = epoch
                self._set_epoch(epoch, self.start_iter if epoch == self.start_epoch else 0)
                self._call("before_train_epoch")
                self.model_without_ddp.train()
                first = self.start_iter if epoch == self.start_epoch else 0
                with contextlib.closing(batches(self.train_loader)) as stream:  # an error ends the workers
                    for self.iter, (images, labels) in enumerate(stream, start=first):
                        self.global_step = epoch * self.iters_per_epoch + self.iter
                        batch = self.batch_pipeline(images, labels, Step(self.seed, self.rank, self.global_step))
                        self._call("before_train_iter", batch)
                        outputs = self.train_step(batch)
                        self._call("after_train_iter", batch, outputs)
                        done = self.iter + 1
                        if done < self.iters_per_epoch and done % self.optim_wrapper.accumulate_steps == 0:
                            self._stop_if_signalled(signals, done)
                self._call("after_train_epoch")  # the epoch's evaluation and checkpoint come first
                if epoch + 1 < self.max_epochs:
                    self._stop_if_signalled(signals, self.iters_per_epoch)
            self._call("after_run")
        return self.metrics

    def train_step(self, batch: Batch) -> StepOutputs:
        """Forward (with the batch's MixToken box), loss, and the update of one batch."""
        paddle.seed(derived_seed(self.seed, self.rank, self.global_step, 0))  # drop path / dropout
        loss, outputs = run_step_forward(self.step_forward, batch, self.compiled, self.mixes_tokens)
        where = f"epoch {self.epoch} iteration {self.iter + 1} (step {self.global_step})"
        stepped = self.optim_wrapper.update(loss, self.iter, self.iters_per_epoch, where, self._newest_checkpoint)
        return StepOutputs(loss, outputs, stepped)

    def _stop_if_signalled(self, signals: StopSignals, iters_done: int) -> None:
        """At a step boundary (no accumulated gradients): stop if any process received a stop signal."""
        if world_size() > 1:  # every process must stop at the same step
            stop = all_reduce_sum([float(signals.requested)])[0] > 0
        else:
            stop = signals.requested
        if not stop:
            return
        self._call("before_stop", iters_done)
        barrier()  # the checkpoint is complete before any process ends
        end_without_report()
        kept = list_checkpoints(self.output_dir)
        saved = f"the newest checkpoint is {kept[-1]}" if kept else "no checkpoint was saved (no CheckpointHook)"
        cause = signals.name if signals.requested else "a stop signal to another process"
        message = f"stopped on {cause} after epoch {self.epoch} iteration {iters_done}: {saved}; continue with --resume auto"
        # logged before the loader shuts down: a launcher ends the other ranks once one of them has exited
        get_logger().warning(message)
        raise Preempted(message)

    def _newest_checkpoint(self) -> str:
        kept = list_checkpoints(self.output_dir)
        return (f"No checkpoint was written since the first of them; the newest is "
                f"{kept[-1] if kept else 'none'}.")

    def _set_epoch(self, epoch: int, start_iter: int) -> None:
        sampler = self.train_loader.batch_sampler
        sampler.set_epoch(epoch)
        sampler.set_start_iter(start_iter)
        if hasattr(self.train_loader.dataset, "set_epoch"):
            self.train_loader.dataset.set_epoch(epoch)

    def _call(self, point: str, *args: Any) -> None:
        for hook in self.hooks.values():
            getattr(hook, point)(self, *args)

    # ----------------------------------------------------------- checkpoints
    def best_model(self) -> paddle.nn.Layer:
        """The model whose metrics are tracked: the EMA when the evaluation tracks it (LV-ViT, T2T-ViT), else the model."""
        return self.ema.module if self.ema is not None and self.metrics.get("tracked") == "ema" \
            else self.model_without_ddp

    def training_state(self, epoch: int, iters_done: int) -> dict[str, Any]:
        return {
            "model": self.model_without_ddp.state_dict(),
            "optimizer": portable_optimizer_state(self.optimizer.state_dict(), self.model_without_ddp),
            "scaler": self.optim_wrapper.scaler.state_dict() if self.optim_wrapper.scaler is not None else None,
            "accumulate_steps": self.optim_wrapper.accumulate_steps,
            "hooks": {key: h.state_dict() for key, h in self.hooks.items()},
            "epoch": epoch,
            "iters_done": iters_done,
            "iters_per_epoch": self.iters_per_epoch,
            "sample_order": self.sample_order,
        }

    @functools.cached_property
    def sample_order(self) -> dict[str, Any]:
        """Computed once: hashing the file list of ImageNet takes a second, and every checkpoint records it."""
        return sample_order(self.train_loader, self.seed, world_size(), self.optim_wrapper.accumulate_steps)

    def resume(self, path: str) -> None:
        """Continue from checkpoint ``path``; ``"auto"``: from the newest usable checkpoint of the output
        dir (a corrupt newer one is skipped with a warning), the one rank 0 chose in every process, or from
        scratch when there is none."""
        if path == "auto":
            found = agreed_latest_checkpoint(self.output_dir)
            if found is None:
                get_logger().info(f"--resume auto: no checkpoint in {self.output_dir}; starting from scratch")
                return
            path, state = found
        else:
            state = load_checkpoint(path)
        saved_order = state.get("sample_order") or {key: state[key] for key in ("iters_per_epoch", "accumulate_steps")}
        check_same_sample_order(saved_order, self.sample_order, path)
        set_state_strict(self.model_without_ddp, state["model"], path)
        self.optimizer.set_state_dict(restore_optimizer_state(state["optimizer"], self.model_without_ddp))
        if self.optim_wrapper.scaler is not None and state["scaler"] is not None:
            self.optim_wrapper.scaler.load_state_dict(state["scaler"])
        for key, hook in self.hooks.items():
            saved = state["hooks"].get(key)
            if saved is None and hook.state_dict():
                raise ValueError(f"cannot resume from {path}: it holds no state for hook '{key}' "
                                 f"({type(hook).__name__}); saved hooks: {', '.join(state['hooks'])}")
            if saved:
                hook.set_state_dict(saved)
        self.start_epoch, self.start_iter = state["epoch"], state["iters_done"]
        if self.start_iter >= self.iters_per_epoch:
            self.start_epoch, self.start_iter = self.start_epoch + 1, 0
        get_logger().info(f"resumed from {path}: continuing at epoch {self.start_epoch}, "  # every process: its file
                          f"iteration {self.start_iter}")

