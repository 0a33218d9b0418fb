"""Model EMA as a hook: updated after every optimizer step, saved in checkpoints."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...models.weights import set_state_strict
from ...utils.registry import HOOKS, Probability
from ..ema import ModelEMA
from .hook import Hook

if TYPE_CHECKING:
    from ...batch.pipeline import Batch
    from ..trainer import StepOutputs, Trainer


@HOOKS.register
class EMAHook(Hook):
    """Tracks an EMA copy of the model (official LV-ViT: decay 0.99992); evaluation uses it too."""

    priority = 30

    def __init__(self, decay: Probability = 0.99992):
        self.decay = decay
        self.ema: ModelEMA | None = None

    def before_run(self, trainer: "Trainer") -> None:
        self.ema = ModelEMA(trainer.model_without_ddp, self.decay)
        trainer.ema = self.ema

    def after_train_iter(self, trainer: "Trainer", batch: "Batch", outputs: "StepOutputs") -> None:
        if outputs.stepped:  # one EMA step per optimizer step
            self.ema.update(trainer.model_without_ddp)

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict()}

    def set_state_dict(self, state: dict) -> None:
        set_state_strict(self.ema.module, state["ema"], "the checkpoint's EMA state")
