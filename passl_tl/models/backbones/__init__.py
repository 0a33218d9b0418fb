"""Backbones (registered in ``BACKBONES``); importing this package registers them."""
from .deit import DeiT  # noqa: F401
from .lvvit import LVViT
from .regnet import RegNet  # noqa: F401
from .t2t_vit import T2TViT  # noqa: F401

__all__ = ["LVViT"]
