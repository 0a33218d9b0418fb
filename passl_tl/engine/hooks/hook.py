"""Hook base class: the trainer calls these methods at fixed points of the loop."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..trainer import Trainer


class Hook:
    """Override the points you need. Lower ``priority`` runs first at every point."""

    priority: int = 50

    def before_run(self, trainer: "Trainer") -> None:
        pass

    def before_train_epoch(self, trainer: "Trainer") -> None:
        pass

    def before_train_iter(self, trainer: "Trainer") -> None:
        pass

    def after_train_iter(self, trainer: "Trainer") -> None:
        pass

    def after_train_epoch(self, trainer: "Trainer") -> None:
        pass

    def after_run(self, trainer: "Trainer") -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints (for hooks that keep some)."""
        return {}

    def set_state_dict(self, state: dict[str, Any]) -> None:
        pass
