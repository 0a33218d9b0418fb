"""VOLO ("VOLO: Vision Outlooker for Visual Recognition"), the token-labeled family of the LV-ViT authors.

LV-ViT's convolutional stem at stride 8, outlooker blocks (outlook attention: each window's values re-weighted
by attention weights predicted from its centre token, then folded back) on that fine grid, a 2x downsample to
the token grid, transformer blocks, and two class-attention blocks with a cls token that joins only there.
Token labels and MixToken boxes live on the token grid (image size / 16); the box is applied, scaled by
``pooling_scale``, to the outlooker's input. Every layer keeps its official name, so checkpoints map one to one.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import Tensor

from ...token_labels.mixtoken import mix_map
from ...utils.registry import BACKBONES, MODELS, ConfigError, PositiveFloat, PositiveInt, Rate
from ..classifier import Classifier, build_preset, patch_token_map
from ..layers import Block, Mlp, init_vit_weights, trunc_normal_
from .lvvit import ConvStem
from .vit import ImageSize, image_size

POS_EMBED_STAGE = 2  # the official forward adds pos_embed in front of network[2] (after the Downsample)


class PatchEmbed(ConvStem):
    """LV-ViT's convolutional stem under VOLO's names: ``conv`` (conv, BN, ReLU, three times) and ``proj``."""

    def keep_layers(self, convs: list[nn.Conv2D], norms: list[nn.BatchNorm2D], proj: nn.Conv2D) -> None:
        self.conv = nn.Sequential(*(layer for pair in zip(convs, norms) for layer in (*pair, nn.ReLU())))
        self.proj = proj

    def layers(self) -> tuple[list[nn.Conv2D], list[nn.BatchNorm2D]]:
        conv = self.conv
        return [conv[0], conv[3], conv[6], self.proj], [conv[1], conv[4], conv[7]]


class OutlookAttention(nn.Layer):
    """Outlook attention on ``[B, H, W, C]``: for every ``kernel_size``² window (``stride`` apart) a linear map of
    the window's pooled input predicts per-head ``k² x k²`` attention weights over the window's values; the
    weighted windows are folded back, overlaps summed."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 3, padding: int = 1, stride: int = 1,
                 qkv_bias: bool = False, qk_scale: float | None = None, attn_drop: float = 0.0):
        super().__init__()
        self.num_heads, self.kernel_size, self.padding, self.stride = num_heads, kernel_size, padding, stride
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.v = nn.Linear(dim, dim, bias_attr=None if qkv_bias else False)
        self.attn = nn.Linear(dim, kernel_size ** 4 * num_heads)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        heads, window = self.num_heads, self.kernel_size ** 2
        values = F.unfold(self.v(x).transpose([0, 3, 1, 2]), self.kernel_size, self.stride, self.padding)
        windows = values.shape[-1]  # [B, C·k², windows], channel-major as torch's Unfold
        values = values.reshape([B, heads, C // heads, window, windows]).transpose([0, 1, 4, 3, 2])
        # pooled in NCHW: Paddle Inference's oneDNN pool2d reads an NHWC input as NCHW (wrong shapes on export)
        pooled = F.avg_pool2d(x.transpose([0, 3, 1, 2]), self.stride, self.stride, ceil_mode=True)
        pooled = pooled.transpose([0, 2, 3, 1])
        attn = self.attn(pooled).reshape([B, windows, heads, window, window]).transpose([0, 2, 1, 3, 4])
        attn = self.attn_drop(F.softmax(attn * self.scale, axis=-1))
        out = paddle.matmul(attn, values).transpose([0, 1, 4, 3, 2]).reshape([B, C * window, windows])
        out = fold(out, [H, W], self.kernel_size, self.stride, self.padding)
        return self.proj(out.transpose([0, 2, 3, 1]))


def fold(x: Tensor, output_size: list[int], kernel: int, stride: int, padding: int) -> Tensor:
    """``F.fold`` (square kernel, stride, padding) as a transposed convolution with one-hot kernels, groups of
    ``k²`` column channels each scattering to one output channel: paddle2onnx has no ``fold`` (and ``F.fold``
    asserts a known batch size, which an export for any batch fails). Each product has one non-zero term and
    the overlaps are summed in ``fold``'s order, so on the CPU the result and its gradient are ``fold``'s bit
    for bit."""
    window = kernel * kernel
    channels = x.shape[1] // window
    rows, cols = ((side + 2 * padding - kernel) // stride + 1 for side in output_size)
    one_hot = paddle.to_tensor(np.tile(np.eye(window).reshape([window, 1, kernel, kernel]), [channels, 1, 1, 1]),
                               dtype=x.dtype)
    return F.conv2d_transpose(x.reshape([0, 0, rows, cols]), one_hot, stride=stride, padding=padding, groups=channels,
                              output_padding=[(side + 2 * padding - kernel) % stride for side in output_size])


class Downsample(nn.Layer):
    """``[B, H, W, C]`` → ``[B, H/p, W/p, C']`` by a ``p x p`` stride-``p`` convolution."""

    def __init__(self, in_dim: int, out_dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2D(in_dim, out_dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.transpose([0, 3, 1, 2])).transpose([0, 2, 3, 1])


class TransformerStage(nn.Sequential):
    """Transformer blocks over the positions of a ``[B, H, W, C]`` map."""

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        x = x.reshape([B, H * W, C])
        for block in self._sub_layers.values():
            x = block(x)
        return x.reshape([B, H, W, C])


class ClassAttention(nn.Layer):
    """CaiT's class attention: the cls token (first) queries all tokens; only its update is returned."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, qk_scale: float | None = None,
                 attn_drop: float = 0.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        inner = num_heads * self.head_dim
        self.kv = nn.Linear(dim, 2 * inner, bias_attr=None if qkv_bias else False)
        self.q = nn.Linear(dim, inner, bias_attr=None if qkv_bias else False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        k, v = paddle.unbind(self.kv(x).reshape([B, N, 2, heads, head_dim]).transpose([2, 0, 3, 1, 4]), axis=0)
        q = self.q(x[:, :1]).reshape([B, 1, heads, head_dim]).transpose([0, 2, 1, 3])
        attn = self.attn_drop(F.softmax(paddle.matmul(q * self.scale, k, transpose_y=True), axis=-1))
        return self.proj(paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([B, 1, heads * head_dim]))


class ClassBlock(nn.Layer):
    """Class-attention block: the cls token gets attention over all tokens and an MLP; the others pass through."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = False,
                 qk_scale: float | None = None, attn_drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttention(dim, num_heads, qkv_bias, qk_scale, attn_drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        cls = x[:, :1] + self.attn(self.norm1(x))
        cls = cls + self.mlp(self.norm2(cls))
        return paddle.concat([cls, x[:, 1:]], axis=1)


@BACKBONES.register
class VOLO(nn.Layer):
    """VOLO backbone: ``forward(x, mix_box)`` → all tokens ``[B, 1 + N, C]`` after the final norm (cls first, then
    the ``grid_size`` token grid row-major). ``mix_box`` (drawn on ``grid_size``) is scaled by ``pooling_scale``
    and applied to the stem output before the outlookers.

    The arguments are the official ``VOLO``'s, one entry per stage in ``layers`` … ``mlp_ratios``;
    ``post_layers`` lists the class-attention blocks (``'ca'``). The official outlookers never get stochastic
    depth (their builder is not passed ``drop_path_rate``); ``outlooker_drop_path`` gives them their scheduled
    rates. As officially, ``drop_rate`` acts on the position embedding only.
    """

    def __init__(self, layers: Sequence[PositiveInt], embed_dims: Sequence[PositiveInt],
                 num_heads: Sequence[PositiveInt], img_size: ImageSize = 224, in_chans: PositiveInt = 3,
                 patch_size: Literal[4, 8, 16] = 8, stem_hidden_dim: PositiveInt = 64,
                 downsamples: Sequence[bool] = (True, False, False, False),
                 outlook_attention: Sequence[bool] = (True, False, False, False),
                 mlp_ratios: Sequence[PositiveFloat] = (3, 3, 3, 3), qkv_bias: bool = False,
                 qk_scale: PositiveFloat | None = None, drop_rate: Rate = 0.0, attn_drop_rate: Rate = 0.0,
                 drop_path_rate: Rate = 0.0, post_layers: Sequence[Literal["ca"]] = ("ca", "ca"),
                 pooling_scale: PositiveInt = 2, out_kernel: PositiveInt = 3, out_stride: PositiveInt = 2,
                 out_padding: int = 1, outlooker_drop_path: bool = False):
        super().__init__()
        stages = len(layers)
        per_stage = dict(embed_dims=embed_dims, num_heads=num_heads, downsamples=downsamples,
                         outlook_attention=outlook_attention, mlp_ratios=mlp_ratios)
        wrong = {k: len(v) for k, v in per_stage.items() if len(v) != stages}
        if wrong:
            raise ConfigError(f"VOLO needs one entry per stage ({stages}, as layers) in {', '.join(wrong)}; got "
                              + ", ".join(f"{k} with {n}" for k, n in wrong.items()))
        if downsamples[-1]:
            raise ConfigError("VOLO downsamples between stages: the last stage cannot have downsamples True")
        if not post_layers:
            raise ConfigError("VOLO needs post_layers (e.g. ['ca', 'ca']): its cls token joins there")
        self.img_size = image_size(img_size)
        self.pooling_scale = pooling_scale
        self.embed_dim = embed_dims[-1]
        self.num_prefix_tokens = 1
        self.grid_size = tuple(side // patch_size // pooling_scale for side in self.img_size)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dims[0], stem_hidden_dim)
        self.pos_embed = self.create_parameter([1, *self.grid_size, self.embed_dim])
        self.pos_drop = nn.Dropout(drop_rate)
        depth_rates = drop_path_rate * np.arange(sum(layers)) / max(sum(layers) - 1, 1)
        network, first_block = [], 0
        for i, depth in enumerate(layers):
            rates = [float(r) for r in depth_rates[first_block:first_block + depth]]
            first_block += depth
            block_options = dict(mlp_ratio=mlp_ratios[i], qkv_bias=qkv_bias, qk_scale=qk_scale)
            if outlook_attention[i]:
                network.append(nn.Sequential(*(
                    Block(embed_dims[i], num_heads[i], drop_path=rate if outlooker_drop_path else 0.0,
                          attention=OutlookAttention(embed_dims[i], num_heads[i], out_kernel, out_padding,
                                                     out_stride, qkv_bias, qk_scale, attn_drop_rate),
                          **block_options)
                    for rate in rates)))
            else:
                network.append(TransformerStage(*(
                    Block(embed_dims[i], num_heads[i], attn_drop=attn_drop_rate, drop_path=rate, **block_options)
                    for rate in rates)))
            if downsamples[i]:
                network.append(Downsample(embed_dims[i], embed_dims[i + 1], 2))
        self.network = nn.LayerList(network)
        self._check_geometry(patch_size, out_kernel, out_stride, out_padding)
        self.post_network = nn.LayerList([
            ClassBlock(self.embed_dim, num_heads[-1], mlp_ratios[-1], qkv_bias, qk_scale, attn_drop_rate)
            for _ in post_layers])
        self.cls_token = self.create_parameter([1, 1, self.embed_dim])
        self.norm = nn.LayerNorm(self.embed_dim)

        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for layer in self.sublayers():
            init_vit_weights(layer)

    def _check_geometry(self, patch_size: int, kernel: int, stride: int, padding: int) -> None:
        """The official forward only works where pos_embed fits the map entering ``network[2]`` and each
        outlook attention's windows match its pooled grid; say which argument breaks that, before any step."""
        stem = [(side + 2 * 3 - 7) // 2 + 1 for side in self.img_size]
        grid = [side // (patch_size // 2) for side in stem]
        for index, stage in enumerate(self.network):
            if index == POS_EMBED_STAGE and (tuple(grid), stage_dim(stage)) != (self.grid_size, self.embed_dim):
                raise ConfigError(
                    f"VOLO adds pos_embed ({self.grid_size[0]}x{self.grid_size[1]}, width {self.embed_dim} = "
                    f"embed_dims[-1]) in front of network[{POS_EMBED_STAGE}], where img_size {self.img_size}, "
                    f"patch_size {patch_size}, downsamples and embed_dims give a {grid[0]}x{grid[1]} map of width "
                    f"{stage_dim(stage)}: the official layout downsamples once, by pooling_scale, after stage 0")
            if isinstance(stage, Downsample):
                grid = [side // 2 for side in grid]
            elif isinstance(stage[0].attn, OutlookAttention):
                windows = [(side + 2 * padding - kernel) // stride + 1 for side in grid]
                if windows != [math.ceil(side / stride) for side in grid]:
                    raise ConfigError(f"VOLO's outlook attention (out_kernel {kernel}, out_stride {stride}, out_padding "
                                      f"{padding}) gives {windows} windows on a {grid} map, its pooling "
                                      f"{[math.ceil(side / stride) for side in grid]}: they must agree")
        if len(self.network) <= POS_EMBED_STAGE:
            raise ConfigError(f"VOLO adds pos_embed in front of network[{POS_EMBED_STAGE}]; these layers and "
                              f"downsamples give only {len(self.network)} network entries")

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def forward(self, x: Tensor, mix_box: Sequence[int] | None = None) -> Tensor:
        x = mix_map(self.patch_embed(x).transpose([0, 2, 3, 1]), mix_box, self.pooling_scale)
        for index, stage in enumerate(self.network):
            if index == POS_EMBED_STAGE:
                x = self.pos_drop(x + self.pos_embed)
            x = stage(x)
        B, H, W, C = x.shape
        x = paddle.concat([self.cls_token.expand([B, -1, -1]), x.reshape([B, H * W, C])], axis=1)
        for block in self.post_network:
            x = block(x)
        return self.norm(x)

    def feature_map(self, x: Tensor) -> Tensor:
        """The token-grid tokens after the final norm as a ``[B, C, rows, cols]`` map."""
        return patch_token_map(self(x), self.grid_size)


def stage_dim(stage: nn.Layer) -> int:
    """The channel width a network entry takes."""
    if isinstance(stage, Downsample):
        return stage.proj.weight.shape[1]
    return stage[0].norm1.weight.shape[0]


# ----------------------------------------------------------------------------- presets
# Official layouts (sail-sg/volo models/volo.py); head defaults from its main.py (--dense-weight 0.5).
# Parameter counts include aux_head, as the official README's do.

def _volo(arch: dict, overrides: dict[str, Any], preset: str) -> Classifier:
    return build_preset({"name": "VOLO", "post_layers": ["ca", "ca"], **arch},
                        {"name": "TokenLabelHead", "num_classes": 1000, "dense_weight": 0.5}, overrides, preset)


@MODELS.register
def volo_d1(**overrides: Any) -> Classifier:
    """VOLO-D1: outlookers 192 wide, transformers 384 wide, layers 4/4/8/2 (26.63M params at 224)."""
    return _volo(dict(layers=[4, 4, 8, 2], embed_dims=[192, 384, 384, 384], num_heads=[6, 12, 12, 12]),
                 overrides, "volo_d1")


@MODELS.register
def volo_d2(**overrides: Any) -> Classifier:
    """VOLO-D2: 256 / 512 wide, layers 6/4/10/4 (58.68M params at 224)."""
    return _volo(dict(layers=[6, 4, 10, 4], embed_dims=[256, 512, 512, 512], num_heads=[8, 16, 16, 16]),
                 overrides, "volo_d2")


@MODELS.register
def volo_d3(**overrides: Any) -> Classifier:
    """VOLO-D3: 256 / 512 wide, layers 8/8/16/4 (86.33M params at 224)."""
    return _volo(dict(layers=[8, 8, 16, 4], embed_dims=[256, 512, 512, 512], num_heads=[8, 16, 16, 16]),
                 overrides, "volo_d3")


@MODELS.register
def volo_d4(**overrides: Any) -> Classifier:
    """VOLO-D4: 384 / 768 wide, layers 8/8/16/4 (192.96M params at 224)."""
    return _volo(dict(layers=[8, 8, 16, 4], embed_dims=[384, 768, 768, 768], num_heads=[12, 16, 16, 16]),
                 overrides, "volo_d4")


@MODELS.register
def volo_d5(**overrides: Any) -> Classifier:
    """VOLO-D5: 384 / 768 wide, layers 12/12/20/4, mlp ratio 4, 128-channel stem (295.46M params at 224)."""
    return _volo(dict(layers=[12, 12, 20, 4], embed_dims=[384, 768, 768, 768], num_heads=[12, 16, 16, 16],
                      mlp_ratios=[4, 4, 4, 4], stem_hidden_dim=128), overrides, "volo_d5")
