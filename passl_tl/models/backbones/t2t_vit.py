"""T2T-ViT ("Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet").

The image is tokenised progressively: three overlapping soft splits (unfold) with a small
single-head transformer (T2T layer: softmax attention, or its Performer approximation) between
them, so the 14x14 tokens (at 224) model local structure before the ViT blocks. The position
embedding is a frozen sine/cosine table. Parameter names follow the official implementation so
checkpoints map one to one.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Mapping

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import Tensor

from ...utils.registry import BACKBONES, MODELS, ConfigError, PositiveFloat, PositiveInt, Rate
from ..classifier import Classifier, build_preset
from ..layers import Attention, Mlp, freeze
from .vit import ImageSize, VisionTransformer, image_size

# (kernel, stride, padding) of the three soft splits: 224 px -> 56 -> 28 -> 14 tokens a side.
SOFT_SPLITS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))


def sinusoid_table(num_positions: int, dim: int) -> np.ndarray:
    """The fixed position table ``[num_positions, dim]`` (float64): position p, channel j has the
    angle ``p / 10000^(2⌊j/2⌋ / dim)``, its sine on even j, its cosine on odd j."""
    channel = np.arange(dim)
    angles = np.arange(num_positions)[:, None] / np.power(10000, 2 * (channel // 2) / dim)
    return np.where(channel % 2 == 0, np.sin(angles), np.cos(angles))


def split_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Patches along one side of a soft split of a map ``size`` long."""
    return (size + 2 * padding - kernel) // stride + 1


def soft_split(x: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
    """``[B, C, H, W]`` → ``[B, h·w, C·k·k]``: each (overlapping) k×k patch as one token, row-major."""
    return F.unfold(x, kernel, stride, padding).transpose([0, 2, 1])


def _t2t_grid(size: int) -> int:
    """Tokens along one side after the three soft splits of an image ``size`` pixels long."""
    for split in SOFT_SPLITS:
        size = split_size(size, *split)
    return size


class TokenTransformer(nn.Layer):
    """T2T layer with single-head softmax attention from ``dim`` to ``out_dim`` channels.

    The attention is scaled by ``dim ** -0.5`` (the input width) and its values are the
    residual, since the width changes; then a pre-norm MLP residual.
    """

    def __init__(self, dim: int, out_dim: int, mlp_ratio: float = 1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, epsilon=1e-5)
        self.attn = Attention(dim, num_heads=1, head_dim=out_dim, qk_scale=dim ** -0.5, out_dim=out_dim,
                              value_skip=True)
        self.norm2 = nn.LayerNorm(out_dim, epsilon=1e-5)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenPerformer(nn.Layer):
    """T2T layer with Performer attention from ``dim`` to ``out_dim`` channels.

    ``kqv`` gives k, q, v (in this order); the softmax kernel is approximated with the positive
    random features ``exp(wᵀx − |x|²/2) / √m`` of the frozen ``w`` ``[m, out_dim]`` (orthogonal
    rows of norm √m, drawn at construction, loaded from checkpoints). v is the residual, then a
    pre-norm MLP residual. ``drop`` is the official fixed dropout of both branches.
    """

    epsilon = 1e-8  # keeps the kernel normaliser away from 0

    def __init__(self, dim: int, out_dim: int, kernel_ratio: float = 0.5, drop: float = 0.1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, epsilon=1e-5)
        self.kqv = nn.Linear(dim, 3 * out_dim)
        self.dp = nn.Dropout(drop)
        self.proj = nn.Linear(out_dim, out_dim)
        self.norm2 = nn.LayerNorm(out_dim, epsilon=1e-5)
        self.mlp = nn.Sequential(nn.Linear(out_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim), nn.Dropout(drop))
        m = int(out_dim * kernel_ratio)
        self.w = freeze(self.create_parameter(
            [m, out_dim], default_initializer=nn.initializer.Orthogonal(gain=math.sqrt(m))))

    def random_features(self, x: Tensor) -> Tensor:
        """``[B, T, out_dim]`` → ``[B, T, m]``."""
        wtx = paddle.matmul(x, self.w, transpose_y=True)
        return paddle.exp(wtx - (x * x).sum(axis=-1, keepdim=True) / 2) / math.sqrt(self.w.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        k, q, v = paddle.split(self.kqv(self.norm1(x)), 3, axis=-1)
        kp, qp = self.random_features(k), self.random_features(q)
        normaliser = paddle.matmul(qp, kp.sum(axis=1, keepdim=True), transpose_y=True)  # [B, T, 1]
        y = paddle.matmul(qp, paddle.matmul(kp, v, transpose_x=True)) / (normaliser + self.epsilon)
        x = v + self.dp(self.proj(y))
        return x + self.mlp(self.norm2(x))


class TokensToToken(nn.Layer):
    """Images ``[B, C, H, W]`` → tokens ``[B, rows·cols, embed_dim]`` (row-major).

    Soft split, T2T layer, tokens back to a map, soft split, T2T layer, back to a map, soft
    split, linear projection.
    """

    LAYERS = {"performer": TokenPerformer, "transformer": TokenTransformer}

    def __init__(self, tokens_type: str, in_chans: int, embed_dim: int, token_dim: int = 64):
        super().__init__()
        if tokens_type not in self.LAYERS:
            raise ConfigError(f"tokens_type must be one of {', '.join(self.LAYERS)}, got '{tokens_type}'")
        layer = self.LAYERS[tokens_type]
        (k0, _, _), (k1, _, _), (k2, _, _) = SOFT_SPLITS
        self.attention1 = layer(in_chans * k0 * k0, token_dim)
        self.attention2 = layer(token_dim * k1 * k1, token_dim)
        self.project = nn.Linear(token_dim * k2 * k2, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        for split, layer in zip(SOFT_SPLITS, (self.attention1, self.attention2)):
            rows, cols = (split_size(size, *split) for size in x.shape[2:])
            x = layer(soft_split(x, *split))
            x = x.transpose([0, 2, 1]).reshape([x.shape[0], -1, rows, cols])
        return self.project(soft_split(x, *SOFT_SPLITS[-1]))


@BACKBONES.register
class T2TViT(VisionTransformer):
    """T2T-ViT backbone: ``forward(x, mix_box)`` → all tokens ``[B, 1 + N, D]`` after the final norm.

    ``tokens_type`` picks the T2T layers: ``performer`` (T2T-ViT-n) or ``transformer``
    (T2T-ViT_t-n). ``mix_box = (x1, y1, x2, y2)`` applies MixToken on the T2T tokens (rows x1:x2,
    columns y1:y2 of the token grid take the batch-flipped sample's tokens) before the cls token
    and the position table are added. The frozen parameters (``pos_embed``, the performers' ``w``)
    have ``stop_gradient`` set. ``qk_scale`` overrides the blocks' attention scale (default
    ``head_dim ** -0.5``; the official ``pretrained=True`` path used ``embed_dim ** -0.5``).
    """

    embedding_name = "tokens_to_token"

    def __init__(self, embed_dim: PositiveInt, depth: PositiveInt, num_heads: PositiveInt,
                 tokens_type: Literal["performer", "transformer"] = "performer", img_size: ImageSize = 224,
                 in_chans: PositiveInt = 3, mlp_ratio: PositiveFloat = 4.0, qkv_bias: bool = False,
                 qk_scale: PositiveFloat | None = None, token_dim: PositiveInt = 64, drop_rate: Rate = 0.0,
                 attn_drop_rate: Rate = 0.0, drop_path_rate: Rate = 0.0):
        height, width = image_size(img_size)
        grid_size = (_t2t_grid(height), _t2t_grid(width))
        if min(grid_size) < 1:
            raise ConfigError(f"T2TViT needs images of at least 3 px a side, got img_size {img_size}")
        super().__init__(TokensToToken(tokens_type, in_chans, embed_dim, token_dim), (height, width), grid_size,
                         embed_dim, depth,
                         num_heads, pos_table=sinusoid_table, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                         drop_path_rate=drop_path_rate, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale)

    def no_weight_decay(self) -> set[str]:
        """The cls token and the frozen tables."""
        return {"cls_token"} | {name for name, param in self.named_parameters() if param.stop_gradient}

    def patch_tokens(self, x: Tensor) -> Tensor:
        return self.tokens_to_token(x)


# ----------------------------------------------------------------------------- presets

def _t2t(arch: dict, head: Mapping[str, Any] | None, overrides: dict[str, Any], preset: str) -> Classifier:
    """``head`` (a head config, e.g. ``{'name': 'TokenLabelHead'}``) replaces the preset's LinearHead."""
    return build_preset({"name": "T2TViT", **arch}, {"num_classes": 1000, **(head or {"name": "LinearHead"})},
                        overrides, preset)


@MODELS.register
def t2t_vit_7(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """T2T-ViT-7: performer T2T, 256 wide, 7 deep, 4 heads (4.3M params)."""
    return _t2t(dict(embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0), head, overrides, "t2t_vit_7")


@MODELS.register
def t2t_vit_10(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """T2T-ViT-10: performer T2T, 256 wide, 10 deep, 4 heads (5.9M params)."""
    return _t2t(dict(embed_dim=256, depth=10, num_heads=4, mlp_ratio=2.0), head, overrides, "t2t_vit_10")


@MODELS.register
def t2t_vit_12(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """T2T-ViT-12: performer T2T, 256 wide, 12 deep, 4 heads (6.9M params)."""
    return _t2t(dict(embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.0), head, overrides, "t2t_vit_12")


@MODELS.register
def t2t_vit_14(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """T2T-ViT-14: performer T2T, 384 wide, 14 deep, 6 heads (21.5M params)."""
    return _t2t(dict(embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0), head, overrides, "t2t_vit_14")


@MODELS.register
def t2t_vit_19(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """T2T-ViT-19: performer T2T, 448 wide, 19 deep, 7 heads (39.2M params)."""
    return _t2t(dict(embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0), head, overrides, "t2t_vit_19")


@MODELS.register
def t2t_vit_24(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """T2T-ViT-24: performer T2T, 512 wide, 24 deep, 8 heads (64.1M params)."""
    return _t2t(dict(embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.0), head, overrides, "t2t_vit_24")


@MODELS.register
def t2t_vit_t_14(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """T2T-ViT_t-14: transformer T2T, 384 wide, 14 deep, 6 heads (21.5M params)."""
    return _t2t(dict(embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0, tokens_type="transformer"),
                head, overrides, "t2t_vit_t_14")


@MODELS.register
def t2t_vit_t_19(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """T2T-ViT_t-19: transformer T2T, 448 wide, 19 deep, 7 heads (39.2M params)."""
    return _t2t(dict(embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0, tokens_type="transformer"),
                head, overrides, "t2t_vit_t_19")


@MODELS.register
def t2t_vit_t_24(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """T2T-ViT_t-24: transformer T2T, 512 wide, 24 deep, 8 heads (64.1M params)."""
    return _t2t(dict(embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.0, tokens_type="transformer"),
                head, overrides, "t2t_vit_t_24")


@MODELS.register
def t2t_vit_14_resnext(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """T2T-ViT-14 with 32 heads of width 12 (the paper's ResNeXt-like variant; 21.5M params)."""
    return _t2t(dict(embed_dim=384, depth=14, num_heads=32, mlp_ratio=3.0), head, overrides, "t2t_vit_14_resnext")


@MODELS.register
def t2t_vit_14_wide(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """T2T-ViT-14-wide: performer T2T, 768 wide, 4 deep, 12 heads (the paper's wide variant; 25.2M params)."""
    return _t2t(dict(embed_dim=768, depth=4, num_heads=12, mlp_ratio=3.0), head, overrides, "t2t_vit_14_wide")
