"""Backbones (registered in ``BACKBONES``); importing this package registers them."""
from .deit import DeiT  # noqa: F401
from .lvvit import LVViT
from .regnet import RegNet  # noqa: F401

__all__ = ["LVViT"]
