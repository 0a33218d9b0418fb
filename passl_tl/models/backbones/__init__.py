"""Backbones (registered in ``BACKBONES``); importing this package registers them and their presets."""
from .deit import DeiT
from .lvvit import LVViT
from .regnet import RegNet
from .t2t_vit import T2TViT
from .volo import VOLO

__all__ = ["DeiT", "LVViT", "RegNet", "T2TViT", "VOLO"]
