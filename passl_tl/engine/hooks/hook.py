"""Hook base class: the trainer calls these methods at fixed points of the loop."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...batch.pipeline import Batch
    from ..trainer import StepOutputs, Trainer


class Hook:
    """What happens around the training step (LR, EMA, logging, evaluation, checkpoints): override the
    points you need. Hooks see the batch and the step's outputs; the step itself is the trainer's.
    Lower ``priority`` runs first at every point."""

    priority: int = 50

    def before_run(self, trainer: "Trainer") -> None:
        pass

    def before_train_epoch(self, trainer: "Trainer") -> None:
        pass

    def before_train_iter(self, trainer: "Trainer", batch: "Batch") -> None:
        pass

    def after_train_iter(self, trainer: "Trainer", batch: "Batch", outputs: "StepOutputs") -> None:
        pass

    def after_train_epoch(self, trainer: "Trainer") -> None:
        pass

    def after_run(self, trainer: "Trainer") -> None:
        pass

    def before_stop(self, trainer: "Trainer", iters_done: int) -> None:
        """The run stops early, on a signal, after iteration ``iters_done`` of ``trainer.epoch``: save what
        must survive (every process calls it; the trainer waits for all before it ends)."""
        pass

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints (for hooks that keep some)."""
        return {}

    def set_state_dict(self, state: dict[str, Any]) -> None:
        pass
