"""Hooks: what happens around the training step (LR, EMA, logging, evaluation, checkpoints); importing
this package registers them."""
from .checkpoint import CheckpointHook
from .ema import EMAHook
from .evaluate import EvaluateHook
from .hook import Hook
from .logger import LoggerHook
from .lr_scheduler import LRSchedulerHook

__all__ = ["Hook", "CheckpointHook", "EMAHook", "EvaluateHook", "LoggerHook", "LRSchedulerHook"]
