"""Training engine: trainer, hooks, optimizers, LR schedules, evaluation, checkpoints."""
from . import hooks, lr_schedulers, optimizers
from .defaults import DEFAULTS
from .evaluation import evaluate
from .fixed_batches import FixedBatches
from ..utils.seeding import seed_everything
from .trainer import Trainer

__all__ = ["DEFAULTS", "FixedBatches", "Trainer", "evaluate", "hooks", "lr_schedulers", "optimizers", "seed_everything"]
