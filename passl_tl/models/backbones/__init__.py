"""Backbones (registered in ``BACKBONES``); importing this package registers them."""
from .lvvit import LVViT

__all__ = ["LVViT"]
