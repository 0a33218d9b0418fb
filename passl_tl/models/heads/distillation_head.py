"""DeiT's heads: a class head on the class token, a distillation head on the distillation token."""
from __future__ import annotations

import math
from typing import Literal, Sequence, get_args

import paddle.nn as nn
import paddle.nn.functional as F
from paddle import Tensor

from ...utils.registry import HEADS, ConfigError, PositiveFloat, PositiveInt, Probability
from ..layers import init_vit_weights
from ..losses import soft_cross_entropy
from .linear_head import per_position

DistillationType = Literal["none", "soft", "hard"]
DISTILLATION_TYPES = get_args(DistillationType)


def soft_distillation(logits: Tensor, teacher: Tensor, tau: float) -> Tensor:
    """``tau² · KL(p_teacher ‖ p_student)`` with ``p = softmax(· / tau)``, summed over the batch and
    the classes and divided by ``B · K`` (the official DeiT normalisation, not a per-sample mean)."""
    log_student = F.log_softmax(logits / tau, axis=-1)
    log_teacher = F.log_softmax(teacher / tau, axis=-1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum() * (tau * tau) / math.prod(logits.shape)


@HEADS.register
class DistillationHead(nn.Layer):
    """``cls_head`` on token 0 (class token) and ``dist_head`` on token 1 (distillation token).

    Train output ``{'cls': [B, K], 'dist': [B, K]}``; eval output their average. ``loss`` is the
    official ``DistillationLoss`` with ``distillation_type`` none, hard or soft, weight ``alpha`` on
    the distillation term and temperature ``tau`` (soft only); the teacher logits come from the
    batch's teacher stage (``Teacher``).
    """

    OFFICIAL_NAMES = {"head": "cls_head", "head_dist": "dist_head"}  # official DeiT -> ours

    def __init__(self, in_channels: int, num_classes: PositiveInt, distillation_type: DistillationType = "hard",
                 alpha: Probability = 0.5, tau: PositiveFloat = 1.0):
        super().__init__()
        if distillation_type not in DISTILLATION_TYPES:
            raise ConfigError(f"DistillationHead distillation_type must be one of {', '.join(DISTILLATION_TYPES)}, "
                              f"got {distillation_type!r}")
        if not 0.0 <= alpha <= 1.0 or tau <= 0.0:
            raise ConfigError(f"DistillationHead needs 0 <= alpha <= 1 and tau > 0, got alpha {alpha}, tau {tau}")
        self.num_classes = num_classes
        self.distillation_type = distillation_type
        self.alpha = alpha
        self.tau = tau
        self.cls_head = nn.Linear(in_channels, num_classes)
        self.dist_head = nn.Linear(in_channels, num_classes)
        for layer in (self.cls_head, self.dist_head):
            init_vit_weights(layer)

    def forward(self, tokens: Tensor, grid_size: Sequence[int], mix_box: Sequence[int] | None = None
                ) -> Tensor | dict[str, Tensor]:
        if mix_box is not None:
            raise ConfigError("MixToken needs the token-label head (TokenLabelHead); remove batch.mixtoken")
        if tokens.shape[1] - grid_size[0] * grid_size[1] < 2:
            raise ConfigError("DistillationHead reads the distillation token (token 1), which this backbone "
                              "lacks: use DeiT with distilled: true")
        x_cls, x_dist = self.cls_head(tokens[:, 0]), self.dist_head(tokens[:, 1])
        if not self.training:
            return (x_cls + x_dist) / 2
        return {"cls": x_cls, "dist": x_dist}

    def dense(self, feature_map: Tensor) -> Tensor:
        """The eval output's average of both heads at every position of ``[B, C, H, W]`` -> ``[B, K, H, W]``."""
        return (per_position(self.cls_head, feature_map) + per_position(self.dist_head, feature_map)) / 2

    def loss(self, outputs: dict[str, Tensor], target: Tensor, teacher_logits: Tensor | None = None) -> Tensor:
        """``target``: ``[B, K]`` soft targets; ``teacher_logits`` ``[B, K]`` (unused with ``distillation_type``
        none).

        none: SoftCE(cls, soft); hard: (1 − α)·SoftCE(cls, soft) + α·CE(dist, argmax teacher);
        soft: (1 − α)·SoftCE(cls, soft) + α·``soft_distillation(dist, teacher, tau)``.
        """
        x_cls, x_dist = outputs["cls"], outputs["dist"]
        soft, teacher = target, teacher_logits
        _check_like(soft, x_cls, "soft targets", "configure batch.target")
        base = soft_cross_entropy(x_cls, soft)
        if self.distillation_type == "none":
            return base
        if teacher is None:
            raise ConfigError(f"distillation_type '{self.distillation_type}' needs the teacher's logits: configure "
                              f"batch.teacher (Teacher), or use distillation_type 'none'")
        _check_like(teacher, x_dist, "teacher logits", "the teacher's num_classes must be the student's")
        if self.distillation_type == "hard":
            distill = F.cross_entropy(x_dist, teacher.argmax(axis=-1))
        else:
            distill = soft_distillation(x_dist, teacher, self.tau)
        return (1.0 - self.alpha) * base + self.alpha * distill


def _check_like(value: Tensor, logits: Tensor, what: str, hint: str) -> None:
    if tuple(value.shape) != tuple(logits.shape):
        raise ValueError(f"DistillationHead needs {what} {list(logits.shape)} ({hint}), got {list(value.shape)}")
