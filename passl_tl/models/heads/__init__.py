"""Heads (registered in ``HEADS``); importing this package registers them."""
from .distillation_head import DistillationHead
from .linear_head import LinearHead
from .token_label_head import TokenLabelHead

__all__ = ["DistillationHead", "LinearHead", "TokenLabelHead"]
