"""RegNetY ("Designing Network Design Spaces"), built as timm 0.3.2 builds it (DeiT's teacher is regnety_160).

Stage widths and depths follow from the linear width rule of a model config (w0, wa, wm, depth),
quantised to multiples of 8 and to whole groups of ``group_w`` channels. Blocks are bottlenecks with
the stride on the grouped 3x3 conv and squeeze-excitation after it. Layer names follow timm
(``stem.conv``, ``s1.b1.conv1.bn``, ``s1.b1.se.fc1``, ``s1.b1.downsample.conv``) so official
checkpoints map one to one.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Mapping, NamedTuple, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import Tensor

from ...token_labels.mixtoken import mix_map
from ...utils.registry import BACKBONES, MODELS, ConfigError, NonNegativeFloat, PositiveFloat, PositiveInt, Range
from ..classifier import Classifier, build_preset
from ..layers import TorchBatchNorm2D, constant_, torch_default_conv_init_
from .vit import ImageSize, image_size

NUM_STAGES = 4  # each halves the resolution: output stride 2 (stem) * 2**4 = 32


class StageSpec(NamedTuple):
    depth: int
    width: int
    group_width: int


def regnet_stages(w0: int, wa: float, wm: float, depth: int, group_w: int, bottle_ratio: float = 1.0,
                  quantum: int = 8) -> list[StageSpec]:
    """Per-stage depth, width and group width of a RegNet config (timm's ``generate_regnet`` and
    ``adjust_widths_groups_comp``).

    Block j has the continuous width w0 + wa·j, snapped to w0·wm^k (k rounded) and then to a
    multiple of ``quantum``; blocks of equal width form a stage. Each stage's group width is capped
    at its bottleneck width, which is then rounded to a whole number of groups.
    """
    if not (wa >= 0 and w0 > 0 and wm > 1 and w0 % quantum == 0):
        raise ConfigError(f"RegNet needs wa >= 0, wm > 1 and w0 > 0 a multiple of {quantum}, "
                          f"got w0={w0}, wa={wa}, wm={wm}")
    continuous = np.arange(depth) * wa + w0
    exponents = np.round(np.log(continuous / w0) / np.log(wm))
    widths = (np.round(w0 * np.power(wm, exponents) / quantum) * quantum).astype(int)
    stages = []
    for width, stage_depth in zip(*np.unique(widths, return_counts=True)):
        bottleneck = int(width * bottle_ratio)
        group_width = min(group_w, bottleneck)
        bottleneck = round(bottleneck / group_width) * group_width
        stages.append(StageSpec(int(stage_depth), int(bottleneck / bottle_ratio), group_width))
    return stages


@paddle.no_grad()
def kaiming_normal_fan_out_(weight: Tensor) -> None:
    """N(0, 2 / fan_out) with fan_out = out_channels · kh · kw (PyTorch's ``mode='fan_out'`` for ReLU)."""
    if not weight._is_initialized():  # built under paddle.LazyGuard: nothing to fill
        return
    std = math.sqrt(2.0 / (weight.shape[0] * math.prod(weight.shape[2:])))
    weight.set_value(paddle.normal(0.0, std, weight.shape).astype(weight.dtype))


class ConvBnAct(nn.Layer):
    """Bias-free conv (padding k // 2) → BatchNorm → ReLU (``act=False``: no ReLU)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 act: bool = True):
        super().__init__()
        self.conv = nn.Conv2D(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2,
                              groups=groups, bias_attr=False)
        self.bn = TorchBatchNorm2D(out_chs)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.act else x


class SqueezeExcite(nn.Layer):
    """x · sigmoid(fc2(relu(fc1(mean over H, W)))), fc1/fc2 being 1x1 convs with bias."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv2D(channels, reduced, 1)
        self.fc2 = nn.Conv2D(reduced, channels, 1)
        for conv in (self.fc1, self.fc2):
            torch_default_conv_init_(conv)  # the biases keep it; RegNet re-draws every conv weight

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(F.relu(self.fc1(x.mean(axis=[2, 3], keepdim=True))))
        return x * F.sigmoid(scale)


class Bottleneck(nn.Layer):
    """1x1 → grouped 3x3 (carries the stride) → SE → 1x1 without ReLU, + shortcut, ReLU.

    The SE width is ``round(in_chs · se_ratio)``, from the block's input width (timm); the
    shortcut is a 1x1 conv + BN when the shape changes.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, group_width: int, bottle_ratio: float,
                 se_ratio: float):
        super().__init__()
        mid = round(out_chs * bottle_ratio)
        self.conv1 = ConvBnAct(in_chs, mid)
        self.conv2 = ConvBnAct(mid, mid, 3, stride=stride, groups=mid // group_width)
        self.se = SqueezeExcite(mid, round(in_chs * se_ratio)) if se_ratio else nn.Identity()
        self.conv3 = ConvBnAct(mid, out_chs, act=False)
        self.downsample = (ConvBnAct(in_chs, out_chs, stride=stride, act=False)
                           if in_chs != out_chs or stride != 1 else None)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv3(self.se(self.conv2(self.conv1(x)))) + shortcut)


@BACKBONES.register
class RegNet(nn.Layer):
    """RegNet backbone: ``forward(x, mix_box)`` → tokens ``[B, 1 + N, embed_dim]``: the globally average-pooled
    features first (what a linear head classifies), then the N positions of the last stage's map row-major (what
    a token-label head's per-position classifier sees).

    ``forward_features`` (alias ``feature_map``) gives that map ``[B, embed_dim, H/32, W/32]``; the stages are
    the sublayers ``s1`` ... ``s4`` (of blocks ``b1``, ``b2``, ...). A CNN takes any image size; given
    ``img_size`` it also has a token grid (its last map: 7 x 7 at 224), so it can learn from token labels on
    that grid, and MixToken boxes drawn there are applied, scaled up, to the stem's output.
    """

    num_prefix_tokens = 1

    def __init__(self, w0: PositiveInt, wa: NonNegativeFloat, wm: Annotated[float, Range(1, low_open=True)],
                 depth: PositiveInt, group_w: PositiveInt, se_ratio: NonNegativeFloat = 0.0,
                 stem_width: PositiveInt = 32, bottle_ratio: PositiveFloat = 1.0, in_chans: PositiveInt = 3,
                 img_size: ImageSize | None = None):
        super().__init__()
        stages = regnet_stages(w0, wa, wm, depth, group_w, bottle_ratio)
        if len(stages) != NUM_STAGES:
            raise ConfigError(f"RegNet config w0={w0}, wa={wa}, wm={wm}, depth={depth} gives {len(stages)} "
                              f"stages, expected {NUM_STAGES}")
        self.img_size = None if img_size is None else image_size(img_size)
        self.stem_size = None if img_size is None else tuple(halved(side) for side in self.img_size)
        self.grid_size = None if img_size is None else tuple(halved(side, NUM_STAGES) for side in self.stem_size)
        self.stem = ConvBnAct(in_chans, stem_width, 3, stride=2)
        self.stage_names = [f"s{i + 1}" for i in range(len(stages))]
        in_chs = stem_width
        for name, spec in zip(self.stage_names, stages):
            blocks = [(f"b{j + 1}", Bottleneck(in_chs if j == 0 else spec.width, spec.width, 2 if j == 0 else 1,
                                               spec.group_width, bottle_ratio, se_ratio))
                      for j in range(spec.depth)]
            self.add_sublayer(name, nn.Sequential(*blocks))
            in_chs = spec.width
        self.embed_dim = in_chs

        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                kaiming_normal_fan_out_(layer.weight)
            elif isinstance(layer, Bottleneck):
                constant_(layer.conv3.bn.weight, 0.0)  # zero_init_last_bn: each block starts as identity

    def forward_features(self, x: Tensor, mix_box: Sequence[int] | None = None) -> Tensor:
        x = self.stem(x)
        if mix_box is not None:
            if self.mix_grid_problem:
                raise ConfigError(self.mix_grid_problem)
            x = mix_map(x, mix_box, self.mix_scale, row_axis=2)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    feature_map = forward_features  # the map the classifier is applied to at every position

    @property
    def mix_scale(self) -> int | None:
        """How many stem-map cells a token-grid cell spans: MixToken boxes (drawn on the token grid) are scaled
        by it and applied to the stem's output. None without a grid, or one that does not divide the stem map."""
        if self.grid_size is None or any(stem % grid for stem, grid in zip(self.stem_size, self.grid_size)):
            return None
        scales = {stem // grid for stem, grid in zip(self.stem_size, self.grid_size)}
        return scales.pop() if len(scales) == 1 else None

    @property
    def mix_grid_problem(self) -> str | None:
        """Why MixToken boxes cannot be applied (None: they can)."""
        if self.mix_scale is not None:
            return None
        if self.grid_size is None:
            return "RegNet applies MixToken boxes to its stem map, which needs model.img_size (a token grid)"
        return (f"RegNet's {self.grid_size[0]}x{self.grid_size[1]} token grid does not divide its "
                f"{self.stem_size[0]}x{self.stem_size[1]} stem map at model.img_size {self.img_size}: use an "
                f"img_size that is a multiple of 32")

    def forward(self, x: Tensor, mix_box: Sequence[int] | None = None) -> Tensor:
        positions = self.forward_features(x, mix_box).flatten(2).transpose([0, 2, 1])
        return paddle.concat([positions.mean(axis=1, keepdim=True), positions], axis=1)


def halved(side: int, times: int = 1) -> int:
    """A side after ``times`` stride-2 3x3 convolutions with padding 1."""
    for _ in range(times):
        side = (side - 1) // 2 + 1
    return side


# ----------------------------------------------------------------------------- presets (timm's RegNetY configs)

def _regnety(cfg: dict, head: Mapping[str, Any] | None, overrides: dict[str, Any], preset: str) -> Classifier:
    """``head`` (a head config, e.g. ``{'name': 'TokenLabelHead'}`` with ``img_size`` set) replaces timm's."""
    head = head or {"name": "LinearHead", "official_name": "head.fc", "init_std": 0.01}
    return build_preset({"name": "RegNet", "se_ratio": 0.25, **cfg}, {"num_classes": 1000, **head}, overrides, preset)


@MODELS.register
def regnety_002(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """RegNetY-200MF (3.2M params)."""
    return _regnety(dict(w0=24, wa=36.44, wm=2.49, group_w=8, depth=13), head, overrides, "regnety_002")


@MODELS.register
def regnety_004(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """RegNetY-400MF (4.3M params)."""
    return _regnety(dict(w0=48, wa=27.89, wm=2.09, group_w=8, depth=16), head, overrides, "regnety_004")


@MODELS.register
def regnety_016(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """RegNetY-1.6GF (11.2M params)."""
    return _regnety(dict(w0=48, wa=20.71, wm=2.65, group_w=24, depth=27), head, overrides, "regnety_016")


@MODELS.register
def regnety_032(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """RegNetY-3.2GF (19.4M params)."""
    return _regnety(dict(w0=80, wa=42.63, wm=2.66, group_w=24, depth=21), head, overrides, "regnety_032")


@MODELS.register
def regnety_160(head: Mapping[str, Any] | None = None, **overrides: Any) -> Classifier:
    """RegNetY-16GF (83.6M params), DeiT's distillation teacher."""
    return _regnety(dict(w0=200, wa=106.23, wm=2.48, group_w=112, depth=18), head, overrides, "regnety_160")
