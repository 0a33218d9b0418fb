"""Heads (registered in ``HEADS``); importing this package registers them."""
from .token_label_head import TokenLabelHead

__all__ = ["TokenLabelHead"]
