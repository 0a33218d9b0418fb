"""Token-labeling head: a class head on the cls token, an auxiliary head on every patch token."""
from __future__ import annotations

from typing import Any, Sequence

import paddle
import paddle.nn as nn
from paddle import Tensor

from ...utils.registry import HEADS, NonNegativeFloat, PositiveInt
from ...token_labels.mixtoken import mix_class_target, unmix_tokens
from ..layers import init_vit_weights
from ..losses import soft_cross_entropy
from .linear_head import per_position


@HEADS.register
class TokenLabelHead(nn.Layer):
    """``cls_head`` on token 0 and ``aux_head`` on the patch tokens (the last ``rows x cols`` tokens,
    so backbones with more prefix tokens, such as DeiT's distillation token, work unchanged).

    Eval output: ``cls + aux_eval_weight · max over tokens of aux`` (per sample and class).
    Train output: ``{'cls': [B, K], 'aux': [B, N, K], 'mix_box': box or None}`` with the MixToken box
    of ``aux`` swapped back, so every token's logits line up with that sample's own token labels; the
    loss mixes the cls target by the box it finds there.
    """

    OFFICIAL_NAMES = {"head": "cls_head", "aux_head": "aux_head"}  # official LV-ViT -> ours
    mixes_tokens = True  # trains with MixToken: un-mixes its per-token outputs

    def __init__(self, in_channels: int, num_classes: PositiveInt, cls_weight: NonNegativeFloat = 1.0,
                 dense_weight: NonNegativeFloat = 1.0, aux_eval_weight: NonNegativeFloat = 0.5,
                 ground_truth: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.cls_weight = cls_weight
        self.dense_weight = dense_weight
        self.aux_eval_weight = aux_eval_weight
        self.ground_truth = ground_truth
        self.cls_head = nn.Linear(in_channels, num_classes)
        self.aux_head = nn.Linear(in_channels, num_classes)
        for layer in (self.cls_head, self.aux_head):
            init_vit_weights(layer)

    def forward(self, tokens: Tensor, grid_size: Sequence[int], mix_box: Sequence[int] | None = None
                ) -> Tensor | dict[str, Any]:
        num_patches = grid_size[0] * grid_size[1]
        # split, not two slices: the backward concatenates the two gradients instead of filling and adding two
        # zero maps the size of the tokens (~18 ms a step for LV-ViT-T at batch 16)
        cls_token, rest = paddle.split(tokens, [1, tokens.shape[1] - 1], axis=1)
        x_cls = self.cls_head(cls_token.squeeze(1))
        x_aux = self.aux_head(rest if rest.shape[1] == num_patches else rest[:, rest.shape[1] - num_patches:])
        if not self.training:
            return x_cls + self.aux_eval_weight * x_aux.max(axis=1)
        return {"cls": x_cls, "aux": unmix_tokens(x_aux, grid_size, mix_box), "mix_box": mix_box}

    def dense(self, feature_map: Tensor) -> Tensor:
        """``aux_head`` (the per-token classifier) at every position of ``[B, C, H, W]`` -> ``[B, K, H, W]``."""
        return per_position(self.aux_head, feature_map)

    def loss(self, outputs: dict[str, Any], target: Tensor) -> Tensor:
        """Soft-target cross entropy of the cls logits and of every token's logits.

        ``target``: ``[B, K, 2 + N]`` token labels (column 0 ground truth, 1 cls target, 2.. the
        tokens row-major), ``[B, K, 2]`` one pooled label per image (no token targets: the class head
        alone learns) or ``[B, K]`` soft labels (then used for every token too). The cls target
        is mixed like the MixToken box (λ = 1 − box area / N); the token targets never are.
        """
        x_cls, x_aux = outputs["cls"], outputs["aux"]
        B, N, K = x_aux.shape
        if target.ndim == 2 and tuple(target.shape) == (B, K):
            cls_target, dense_target = target, target.unsqueeze(1)
        elif target.ndim == 3 and tuple(target.shape) in ((B, K, 2 + N), (B, K, 2)):
            cls_target = target[:, :, 1]
            if self.ground_truth:
                cls_target = _trust_ground_truth(target[:, :, 0], cls_target)
            dense_target = target[:, :, 2:].transpose([0, 2, 1]) if target.shape[2] > 2 else None
        else:
            raise ValueError(f"target must be [B, K] = [{B}, {K}], [B, K, 2] or [B, K, 2 + N] = [{B}, {K}, {2 + N}], "
                             f"got {list(target.shape)}")
        loss = self.cls_weight * soft_cross_entropy(x_cls, mix_class_target(cls_target, outputs["mix_box"], N))
        return loss if dense_target is None else loss + self.dense_weight * soft_cross_entropy(x_aux, dense_target)


def _trust_ground_truth(ground_truth: Tensor, cls_target: Tensor) -> Tensor:
    """Blend in the ground truth: 50% when the cls target's top class agrees with it, else 10%."""
    agree = ground_truth.argmax(-1) == cls_target.argmax(-1)
    ratio = paddle.where(agree, paddle.full_like(agree, 0.5, dtype=cls_target.dtype),
                         paddle.full_like(agree, 0.9, dtype=cls_target.dtype)).unsqueeze(-1)
    return cls_target * ratio + ground_truth * (1.0 - ratio)
