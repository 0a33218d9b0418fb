"""Training engine: trainer, hooks, optimizers, LR schedules, evaluation, checkpoints."""
from . import hooks, lr_schedulers, optimizers
from .defaults import DEFAULTS
from .evaluation import evaluate
from .trainer import Trainer, seed_everything

__all__ = ["DEFAULTS", "Trainer", "evaluate", "hooks", "lr_schedulers", "optimizers", "seed_everything"]
