"""A linear classifier on the class token (ViTs) or on pooled features (CNNs)."""
from __future__ import annotations

from typing import Sequence

import paddle.nn as nn
from paddle import Tensor

from ...utils.registry import HEADS, ConfigError, NonNegativeFloat, PositiveInt
from ..layers import constant_, trunc_normal_
from ..losses import soft_cross_entropy


def per_position(linear: nn.Linear, feature_map: Tensor) -> Tensor:
    """``linear`` applied at every position of a ``[B, C, H, W]`` map (a 1x1 conv) -> ``[B, K, H, W]``."""
    return linear(feature_map.transpose([0, 2, 3, 1])).transpose([0, 3, 1, 2])


@HEADS.register
class LinearHead(nn.Layer):
    """``fc`` on token 0 of ``[B, T, D]`` tokens, or on ``[B, C]`` pooled features.

    The output is the same in train and eval mode. ``loss`` is the soft-target cross entropy
    with ``[B, K]`` targets (smoothed or mixed labels). MixToken needs per-token outputs to
    un-mix, so it goes with the token-label head, not this one (as officially).
    ``official_name`` is the layer's name in official checkpoints (``head`` for DeiT and
    T2T-ViT, ``head.fc`` for timm's RegNet); ``init_std`` the std of its weight init (bias 0).
    """

    def __init__(self, in_channels: int, num_classes: PositiveInt, official_name: str = "head",
                 init_std: NonNegativeFloat = 0.02):
        super().__init__()
        self.num_classes = num_classes
        self.OFFICIAL_NAMES = {official_name: "fc"}
        self.fc = nn.Linear(in_channels, num_classes)
        trunc_normal_(self.fc.weight, std=init_std)
        constant_(self.fc.bias, 0.0)

    def forward(self, features: Tensor, grid_size: Sequence[int] | None = None,
                mix_box: Sequence[int] | None = None) -> Tensor:
        if mix_box is not None:
            raise ConfigError("MixToken needs the token-label head (TokenLabelHead); remove batch.mixtoken")
        return self.fc(features[:, 0] if features.ndim == 3 else features)

    def dense(self, feature_map: Tensor) -> Tensor:
        """``fc`` at every position of a ``[B, C, H, W]`` feature map -> ``[B, K, H, W]``."""
        return per_position(self.fc, feature_map)

    def loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        """Soft-target cross entropy against ``[B, K]`` soft labels, or against the pooled crop label of
        ``[B, K, 2]`` one-per-image token labels (column 1; column 0, the ground truth, unused), as the official
        ``TokenLabelSoftTargetCrossEntropy`` of ``--token-label-size 1``."""
        if target.ndim == 3 and tuple(target.shape) == (*outputs.shape, 2):
            target = target[:, :, 1]
        if target.ndim != 2 or tuple(target.shape) != tuple(outputs.shape):
            raise ValueError(f"LinearHead needs soft targets {list(outputs.shape)} or one-per-image token labels "
                             f"{[*outputs.shape, 2]} (configure batch.target), got {list(target.shape)}")
        return soft_cross_entropy(outputs, target)
