"""LV-ViT ("All Tokens Matter: Token Labeling for Training Better Vision Transformers").

A ViT with a 4-layer convolutional patch embedding, residual branches scaled by 1/skip_lam,
and MixToken (a CutMix box swapped between samples on the patch-token grid).
Parameter names follow the official implementation so checkpoints map one to one.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import Tensor, _C_ops
from paddle.autograd import PyLayer

from ...utils.registry import BACKBONES, MODELS, ConfigError
from ..classifier import Classifier, build_preset, patch_token_map
from ..layers import Block, TorchBatchNorm2D, init_vit_weights, lean_backward, tokens_with_prefix, trunc_normal_


class ConvStem(nn.Layer):
    """conv7x7/2 → BN → ReLU, (conv3x3 → BN → ReLU) ×2, then a strided ``patch_size // 2`` projection.

    In training (without AMP) each BN → ReLU → next conv is one step whose backward recomputes ReLU(BN)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2D(in_chans, channels, 7, stride=2, padding=3, bias_attr=False)
        self.bn1 = TorchBatchNorm2D(channels)
        self.conv2 = nn.Conv2D(channels, channels, 3, padding=1, bias_attr=False)
        self.bn2 = TorchBatchNorm2D(channels)
        self.conv3 = nn.Conv2D(channels, channels, 3, padding=1, bias_attr=False)
        self.bn3 = TorchBatchNorm2D(channels)
        self.proj = nn.Conv2D(channels, embed_dim, patch_size // 2, stride=patch_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        lean = lean_backward(self.training)
        for bn, conv in ((self.bn1, self.conv2), (self.bn2, self.conv3), (self.bn3, self.proj)):
            if lean:
                x = _BNReLUConv.apply(x, bn.weight, bn.bias, conv.weight, conv.bias, bn, conv)
            else:
                x = conv(F.relu(bn(x)))
        return x


class _BNReLUConv(PyLayer):
    """``conv(relu(bn(x)))`` (training) whose backward keeps ``x``, which BatchNorm's backward keeps anyway, but
    not ``relu(bn(x))``: it recomputes that (one more BatchNorm forward of the same batch, same values) instead
    of keeping a second stem-sized map (49 MB a stage for LV-ViT-T at batch 16). The backward runs autograd's
    kernels (add_grad, conv2d_grad, relu_grad, batch_norm_grad), so the gradients are bit-identical."""

    @staticmethod
    def forward(ctx, x: Tensor, bn_weight: Tensor, bn_bias: Tensor, conv_weight: Tensor, conv_bias: Tensor | None,
                bn: nn.BatchNorm2D, conv: nn.Conv2D) -> Tensor:
        ctx.bn, ctx.conv = bn, conv
        ctx.needs_grad = [not t.stop_gradient for t in (x, bn_weight, bn_bias, conv_weight, conv_bias) if t is not None]
        ctx.save_for_backward(x)
        return conv(F.relu(bn(x)))  # bn updates its running statistics here, once

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensor()
        bn, conv = ctx.bn, ctx.conv
        # BatchNorm in training mode again (on copies of the running statistics, which forward updated)
        activated, _, _, saved_mean, saved_variance, reserve = _C_ops.batch_norm(
            x, bn._mean.clone(), bn._variance.clone(), bn.weight, bn.bias, False, bn._momentum, bn._epsilon,
            bn._data_format, False, False)
        F.relu_(activated)
        grad_conv_bias = ()
        if conv.bias is not None:  # add_grad reads only the shape of its first input (the conv, shaped like grad)
            grad, grad_conv_bias = _C_ops.add_grad(grad, conv.bias.reshape([1, -1, 1, 1]), grad, -1)
            grad_conv_bias = (grad_conv_bias.reshape([-1]),)
        grad_activated, grad_conv_weight = _C_ops.conv2d_grad(
            activated, conv.weight, grad, conv._stride, conv._updated_padding, conv._padding_algorithm,
            conv._dilation, conv._groups, conv._data_format)
        grad_normed = _C_ops.relu_grad_(activated, grad_activated)  # in place, and activated freed before
        del activated, grad_activated                                  # batch_norm_grad: two stem-sized maps
        grad_x, grad_bn_weight, grad_bn_bias = _C_ops.batch_norm_grad(
            x, bn.weight, bn.bias, bn._mean, bn._variance, saved_mean, saved_variance, reserve, grad_normed,
            bn._momentum, bn._epsilon, bn._data_format, False, False, False)
        grads = (grad_x, grad_bn_weight, grad_bn_bias, grad_conv_weight, *grad_conv_bias)
        return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_grad))


@BACKBONES.register
class LVViT(nn.Layer):
    """LV-ViT backbone: ``forward(x, mix_box)`` → all tokens ``[B, 1 + N, D]`` after the final norm.

    ``mix_box = (x1, y1, x2, y2)`` applies MixToken on the stem output ``[B, D, H, W]``: rows
    x1:x2 and columns y1:y2 take the features of the batch-flipped sample (None: no mixing).
    """

    num_prefix_tokens = 1  # the cls token, before the patch tokens

    def __init__(self, embed_dim: int, depth: int, num_heads: int, img_size: int | Sequence[int] = 224,
                 patch_size: int = 16, in_chans: int = 3, mlp_ratio: float = 3.0, qkv_bias: bool = False,
                 head_dim: int | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, skip_lam: float = 1.0, stem_channels: int = 64):
        super().__init__()
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if patch_size % 2 or height % patch_size or width % patch_size:
            raise ConfigError(f"LVViT needs an even patch_size dividing img_size, got patch_size {patch_size} "
                              f"and img_size {img_size}")
        self.embed_dim = embed_dim
        self.grid_size = (height // patch_size, width // patch_size)
        self.patch_embed = ConvStem(patch_size, in_chans, embed_dim, stem_channels)
        self.cls_token = self.create_parameter([1, 1, embed_dim])
        self.pos_embed = self.create_parameter([1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim])
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.LayerList([
            Block(embed_dim, num_heads, head_dim=head_dim, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=float(rate), skip_lam=skip_lam)
            for rate in np.linspace(0.0, drop_path_rate, depth)])
        self.norm = nn.LayerNorm(embed_dim, epsilon=1e-5)

        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for layer in self.sublayers():
            init_vit_weights(layer)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def forward(self, x: Tensor, mix_box: Sequence[int] | None = None) -> Tensor:
        patches = self.patch_embed(x).flatten(2).transpose([0, 2, 1])
        x = self.pos_drop(tokens_with_prefix(patches, self.grid_size, [self.cls_token], self.pos_embed, mix_box))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def feature_map(self, x: Tensor) -> Tensor:
        """The patch tokens after the final norm as a ``[B, D, rows, cols]`` map."""
        return patch_token_map(self(x), self.grid_size)


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
