"""Training hooks; importing this package registers them."""
from .checkpoint import CheckpointHook
from .distillation import DistillationHook
from .ema import EMAHook
from .evaluate import EvaluateHook
from .hook import Hook
from .logger import LoggerHook
from .lr_scheduler import LRSchedulerHook
from .mixtoken import MixTokenHook, sample_mix_box
from .mixup import MixupHook
from .optimizer import OptimizerHook

__all__ = ["Hook", "CheckpointHook", "DistillationHook", "EMAHook", "EvaluateHook", "LoggerHook", "LRSchedulerHook",
           "MixTokenHook", "MixupHook", "OptimizerHook", "sample_mix_box"]
