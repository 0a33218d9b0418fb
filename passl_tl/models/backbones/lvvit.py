"""LV-ViT ("All Tokens Matter: Token Labeling for Training Better Vision Transformers").

A ViT with a 4-layer convolutional patch embedding, residual branches scaled by 1/skip_lam,
and MixToken (a CutMix box swapped between samples on the patch-token grid).
Parameter names follow the official implementation so checkpoints map one to one.
"""
from __future__ import annotations

from typing import Any

import paddle.nn as nn
from paddle import Tensor

from ...utils.registry import BACKBONES, MODELS, ConfigError, PositiveFloat, PositiveInt, Rate
from .. import lean_backward
from ..classifier import Classifier, build_preset
from ..layers import TorchBatchNorm2D
from .vit import ImageSize, VisionTransformer, image_size


class ConvStem(nn.Layer):
    """conv7x7/2 → BN → ReLU, (conv3x3 → BN → ReLU) ×2, then a strided ``patch_size // 2`` projection.

    Each BN → ReLU → next conv is one lean step, whose backward (in training) recomputes ReLU(BN).
    ``keep_layers`` registers the layers under the family's official names (here LV-ViT's ``conv1`` ...)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, channels: int):
        super().__init__()
        convs, norms = [], []
        for kernel, stride, inputs in ((7, 2, in_chans), (3, 1, channels), (3, 1, channels)):
            convs.append(nn.Conv2D(inputs, channels, kernel, stride=stride, padding=kernel // 2, bias_attr=False))
            norms.append(TorchBatchNorm2D(channels))
        self.keep_layers(convs, norms, nn.Conv2D(channels, embed_dim, patch_size // 2, stride=patch_size // 2))

    def keep_layers(self, convs: list[nn.Conv2D], norms: list[nn.BatchNorm2D], proj: nn.Conv2D) -> None:
        self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3 = (
            layer for pair in zip(convs, norms) for layer in pair)
        self.proj = proj

    def layers(self) -> tuple[list[nn.Conv2D], list[nn.BatchNorm2D]]:
        """The four convolutions (the projection last) and the three BatchNorms between them."""
        return [self.conv1, self.conv2, self.conv3, self.proj], [self.bn1, self.bn2, self.bn3]

    def forward(self, x: Tensor) -> Tensor:
        convs, norms = self.layers()
        x = convs[0](x)
        for bn, conv in zip(norms, convs[1:]):
            x = lean_backward.bn_relu_conv(x, bn, conv)
        return x


@BACKBONES.register
class LVViT(VisionTransformer):
    """LV-ViT backbone: the ViT on the conv stem, residual branches divided by ``skip_lam``.

    ``forward(x, mix_box)`` → all tokens ``[B, 1 + N, D]`` after the final norm; ``mix_box = (x1, y1, x2, y2)``
    applies MixToken on the stem output ``[B, D, H, W]``: rows x1:x2 and columns y1:y2 take the features of
    the batch-flipped sample (None: no mixing).
    """

    def __init__(self, embed_dim: PositiveInt, depth: PositiveInt, num_heads: PositiveInt, img_size: ImageSize = 224,
                 patch_size: PositiveInt = 16, in_chans: PositiveInt = 3, mlp_ratio: PositiveFloat = 3.0,
                 qkv_bias: bool = False, head_dim: PositiveInt | None = None, drop_rate: Rate = 0.0,
                 attn_drop_rate: Rate = 0.0, drop_path_rate: Rate = 0.0, skip_lam: PositiveFloat = 1.0,
                 stem_channels: PositiveInt = 64):
        height, width = image_size(img_size)
        if patch_size % 2 or height % patch_size or width % patch_size:
            raise ConfigError(f"LVViT needs an even patch_size dividing img_size, got patch_size {patch_size} "
                              f"and img_size {img_size}")
        super().__init__(ConvStem(patch_size, in_chans, embed_dim, stem_channels), (height, width),
                         (height // patch_size, width // patch_size), embed_dim, depth, num_heads,
                         drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                         mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, head_dim=head_dim, skip_lam=skip_lam)


# ----------------------------------------------------------------------------- presets

def _lvvit(arch: dict, overrides: dict[str, Any], preset: str) -> Classifier:
    return build_preset({"name": "LVViT", **arch}, {"name": "TokenLabelHead", "num_classes": 1000}, overrides, preset)


@MODELS.register
def lvvit_tiny(**overrides: Any) -> Classifier:
    """LV-ViT-T: 240 wide, 12 deep, 4 heads (8.5M params)."""
    return _lvvit(dict(embed_dim=240, depth=12, num_heads=4, skip_lam=1.0), overrides, "lvvit_tiny")


@MODELS.register
def lvvit_small(**overrides: Any) -> Classifier:
    """LV-ViT-S: 384 wide, 16 deep, 6 heads (26.2M params)."""
    return _lvvit(dict(embed_dim=384, depth=16, num_heads=6, skip_lam=2.0), overrides, "lvvit_small")


@MODELS.register
def lvvit_medium(**overrides: Any) -> Classifier:
    """LV-ViT-M: 512 wide, 20 deep, 8 heads (55.8M params)."""
    return _lvvit(dict(embed_dim=512, depth=20, num_heads=8, skip_lam=2.0), overrides, "lvvit_medium")


@MODELS.register
def lvvit_large(**overrides: Any) -> Classifier:
    """LV-ViT-L: 768 wide, 24 deep, 12 heads, 128-channel stem (150.02M params at 224)."""
    return _lvvit(dict(embed_dim=768, depth=24, num_heads=12, skip_lam=3.0, stem_channels=128),
                  overrides, "lvvit_large")
