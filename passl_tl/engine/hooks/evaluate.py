"""Validation every N epochs (and after the last), of the model and of its EMA if tracked."""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ...utils.dist import broadcast_buffers
from ...utils.inference import TracedForwards
from ...utils.registry import HOOKS, ConfigError, PositiveInt
from ..evaluation import evaluate
from .hook import Hook

if TYPE_CHECKING:
    from ..trainer import Trainer


@HOOKS.register
class EvaluateHook(Hook):
    """Evaluates the model and, if one is tracked, its EMA; both are logged. ``track`` picks the
    metrics that choose the best checkpoint: ``"ema"`` (the LV-ViT and T2T-ViT recipes; the model's
    when there is no EMA) or ``"model"`` (DeiT reports its raw model and only saves the EMA). The model's and
    the EMA's programs for oneDNN are traced at the first evaluation only (see ``TracedForwards``)."""

    priority = 35

    def __init__(self, interval: PositiveInt = 1, track: Literal["ema", "model"] = "ema"):
        if track not in ("ema", "model"):
            raise ConfigError(f"EvaluateHook track must be 'ema' or 'model', got {track!r}")
        self.interval = interval
        self.track = track
        self.traced = TracedForwards()

    def after_train_epoch(self, trainer: "Trainer") -> None:
        last = trainer.epoch + 1 == trainer.max_epochs
        if trainer.val_loader is None or not ((trainer.epoch + 1) % self.interval == 0 or last):
            trainer.metrics = {}
            return
        broadcast_buffers(trainer.model_without_ddp)
        backend = trainer.cfg["eval_backend"]
        metrics = {f"model/{k}": v for k, v in evaluate(
            trainer.model_without_ddp, trainer.val_loader, trainer.amp_context, backend,
            what=f"epoch {trainer.epoch} eval (model), images", traced=self.traced).items()}
        tracked = "model"
        if trainer.ema is not None:
            broadcast_buffers(trainer.ema.module)
            metrics.update({f"ema/{k}": v for k, v in evaluate(
                trainer.ema.module, trainer.val_loader, trainer.amp_context, backend,
                what=f"epoch {trainer.epoch} eval (EMA), images", traced=self.traced).items()})
            tracked = self.track
        trainer.metrics = {**metrics, "top1": metrics[f"{tracked}/top1"], "tracked": tracked}
