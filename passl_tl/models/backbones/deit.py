"""DeiT ("Training data-efficient image transformers & distillation through attention").

The timm 0.3.2 ViT that DeiT trains (16x16 patch projection, qkv bias, LayerNorm eps 1e-6),
optionally with a distillation token after the class token: tokens are [cls, dist, patches].
Parameter names follow the official implementation so checkpoints map one to one.
"""
from __future__ import annotations

from typing import Any, Mapping

import paddle.nn as nn
from paddle import Tensor

from ...utils.registry import BACKBONES, MODELS, ConfigError, PositiveFloat, PositiveInt, Rate
from ..classifier import Classifier, build_preset
from .vit import ImageSize, VisionTransformer, image_size


class PatchEmbed(nn.Layer):
    """Non-overlapping ``patch_size`` patches projected to ``embed_dim`` by one strided conv."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2D(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


@BACKBONES.register
class DeiT(VisionTransformer):
    """DeiT backbone: ``forward(x, mix_box)`` → all tokens ``[B, prefix + N, D]`` after the final norm.

    ``distilled`` adds the distillation token (prefix = cls, dist), weight-decayed as in the official
    DeiT. ``mix_box = (x1, y1, x2, y2)`` applies MixToken on the patch grid ``[B, D, H, W]`` before the
    prefix tokens and positions are added: rows x1:x2 and columns y1:y2 take the features of the
    batch-flipped sample.
    """

    def __init__(self, embed_dim: PositiveInt, depth: PositiveInt, num_heads: PositiveInt, img_size: ImageSize = 224,
                 patch_size: PositiveInt = 16, in_chans: PositiveInt = 3, mlp_ratio: PositiveFloat = 4.0,
                 qkv_bias: bool = True, distilled: bool = False, drop_rate: Rate = 0.0, attn_drop_rate: Rate = 0.0,
                 drop_path_rate: Rate = 0.0):
        height, width = image_size(img_size)
        if height % patch_size or width % patch_size:
            raise ConfigError(f"DeiT needs a patch_size dividing img_size, got patch_size {patch_size} "
                              f"and img_size {img_size}")
        super().__init__(PatchEmbed(patch_size, in_chans, embed_dim), (height, width),
                         (height // patch_size, width // patch_size),
                         embed_dim, depth, num_heads, extra_tokens=("dist_token",) if distilled else (),
                         norm_eps=1e-6, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                         drop_path_rate=drop_path_rate, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)


# ----------------------------------------------------------------------------- presets

TINY = dict(embed_dim=192, depth=12, num_heads=3)
SMALL = dict(embed_dim=384, depth=12, num_heads=6)
BASE = dict(embed_dim=768, depth=12, num_heads=12)


def _deit(arch: dict, distilled: bool, head: Mapping[str, Any] | None, overrides: dict[str, Any],
          preset: str) -> Classifier:
    """``head`` (a head config, e.g. ``{'name': 'TokenLabelHead'}``) replaces the preset's head."""
    head = head or {"name": "DistillationHead" if distilled else "LinearHead"}
    return build_preset({"name": "DeiT", "distilled": distilled, **arch}, {"num_classes": 1000, **head},
                        overrides, preset)


@MODELS.register
def deit_tiny_patch16_224(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """DeiT-Ti: 192 wide, 12 deep, 3 heads (5.7M params)."""
    return _deit(TINY, False, head, overrides, "deit_tiny_patch16_224")


@MODELS.register
def deit_small_patch16_224(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """DeiT-S: 384 wide, 12 deep, 6 heads (22.1M params)."""
    return _deit(SMALL, False, head, overrides, "deit_small_patch16_224")


@MODELS.register
def deit_base_patch16_224(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """DeiT-B: 768 wide, 12 deep, 12 heads (86.6M params)."""
    return _deit(BASE, False, head, overrides, "deit_base_patch16_224")


@MODELS.register
def deit_base_patch16_384(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """DeiT-B at 384x384 (86.9M params)."""
    return _deit({**BASE, "img_size": 384}, False, head, overrides, "deit_base_patch16_384")


@MODELS.register
def deit_tiny_distilled_patch16_224(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """Distilled DeiT-Ti: DeiT-Ti with a distillation token and head (5.9M params)."""
    return _deit(TINY, True, head, overrides, "deit_tiny_distilled_patch16_224")


@MODELS.register
def deit_small_distilled_patch16_224(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """Distilled DeiT-S: DeiT-S with a distillation token and head (22.4M params)."""
    return _deit(SMALL, True, head, overrides, "deit_small_distilled_patch16_224")


@MODELS.register
def deit_base_distilled_patch16_224(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """Distilled DeiT-B: DeiT-B with a distillation token and head (87.3M params)."""
    return _deit(BASE, True, head, overrides, "deit_base_distilled_patch16_224")


@MODELS.register
def deit_base_distilled_patch16_384(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """Distilled DeiT-B at 384x384 (87.6M params)."""
    return _deit({**BASE, "img_size": 384}, True, head, overrides, "deit_base_distilled_patch16_384")
