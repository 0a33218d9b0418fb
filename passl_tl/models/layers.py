"""Vision-transformer building blocks (attention, MLP, blocks, drop path, init, torch-style BatchNorm).

Their memory-lean training steps are in ``lean_backward``."""
from __future__ import annotations

import math
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import Tensor

from . import lean_backward


# ----------------------------------------------------------------------------- init helpers

@paddle.no_grad()
def trunc_normal_(param: Tensor, std: float = 1.0, mean: float = 0.0, a: float = -2.0, b: float = 2.0) -> Tensor:
    """Fill ``param`` with N(mean, std²) truncated to the ABSOLUTE interval [a, b] (timm semantics).

    With the usual ``std=.02`` the bounds ±2 are 100 std away, so this is an untruncated normal
    (unlike Paddle's ``TruncatedNormal``, which cuts at ±2 std). Parameters built under ``paddle.LazyGuard``
    (shapes only, e.g. to compare a checkpoint with a preset) are left unfilled.
    """
    if not param._is_initialized():
        return param
    cdf_a = 0.5 * (1.0 + math.erf((a - mean) / (std * math.sqrt(2.0))))
    cdf_b = 0.5 * (1.0 + math.erf((b - mean) / (std * math.sqrt(2.0))))
    u = paddle.uniform(param.shape, dtype=param.dtype, min=2 * cdf_a - 1, max=2 * cdf_b - 1)
    value = paddle.erfinv(u) * (std * math.sqrt(2.0)) + mean
    param.set_value(paddle.clip(value, a, b))
    return param


@paddle.no_grad()
def constant_(param: Tensor, value: float) -> Tensor:
    if not param._is_initialized():  # built under paddle.LazyGuard: nothing to fill
        return param
    param.set_value(paddle.full(param.shape, value, dtype=param.dtype))
    return param


@paddle.no_grad()
def torch_default_conv_init_(conv: nn.Conv2D) -> None:
    """PyTorch's default Conv2d init: weight and bias ~ U(±1/sqrt(fan_in)).

    (``kaiming_uniform_(a=sqrt(5))`` reduces to that bound for the weight.)
    """
    fan_in = math.prod(conv.weight.shape[1:])
    bound = 1.0 / math.sqrt(fan_in)
    for param in (conv.weight, conv.bias):
        if param is not None and param._is_initialized():  # (not under paddle.LazyGuard)
            param.set_value(paddle.uniform(param.shape, dtype=param.dtype, min=-bound, max=bound))


def init_vit_weights(layer: nn.Layer) -> None:
    """The official ViT init of one layer: Linear N(0, .02²) weight and zero bias, LayerNorm 1/0,
    Conv2D PyTorch default; other layers keep their defaults (BatchNorm is already 1/0, 0/1)."""
    if isinstance(layer, nn.Linear):
        trunc_normal_(layer.weight, std=0.02)
        if layer.bias is not None:
            constant_(layer.bias, 0.0)
    elif isinstance(layer, nn.LayerNorm):
        constant_(layer.weight, 1.0)
        constant_(layer.bias, 0.0)
    elif isinstance(layer, nn.Conv2D):
        torch_default_conv_init_(layer)


def freeze(param: Tensor) -> Tensor:
    """Exclude a parameter from training (it stays in the state dict and the parameter count)."""
    param.stop_gradient = True
    return param


# ----------------------------------------------------------------------------- layers

class TorchBatchNorm2D(nn.BatchNorm2D):
    """BatchNorm2D whose running variance follows PyTorch.

    Both normalise a training batch with its biased variance, but PyTorch updates ``running_var``
    with the unbiased one (×n/(n−1), n = B·H·W) while Paddle uses the biased one. The batch
    contribution of Paddle's update is rescaled accordingly. ``momentum`` is Paddle's (0.9 = torch 0.1).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return F.batch_norm(x, self._mean, self._variance, self.weight, self.bias,
                                training=False, epsilon=self._epsilon, data_format=self._data_format)
        n = math.prod(x.shape) // x.shape[1]
        if n < 2:
            raise ValueError(f"BatchNorm needs more than one value per channel in training, got input {x.shape}")
        previous = self._variance.clone()
        out = F.batch_norm(x, self._mean, self._variance, self.weight, self.bias, training=True,
                           momentum=self._momentum, epsilon=self._epsilon, data_format=self._data_format)
        with paddle.no_grad():
            kept = self._momentum * previous
            corrected = kept + (self._variance - kept) * (n / (n - 1))
            if paddle.in_dynamic_mode():  # set_value: the version autograd checks for the backward stays
                self._variance.set_value(corrected)
            else:  # compiled: an assignment the program makes
                paddle.assign(corrected, output=self._variance)
        return out


class DropPath(nn.Layer):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``drop_prob``."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return self.add_to(None, x)

    def add_to(self, residual: Tensor | None, x: Tensor, divisor: float = 1.0) -> Tensor:
        """``residual + drop_path(x) / divisor`` (``residual`` None: the scaled branch alone); in training one
        lean step, whose backward keeps only the per-sample mask."""
        if self.drop_prob == 0.0 or not self.training:
            out = x if divisor == 1.0 else x / divisor
            return out if residual is None else residual + out
        keep = 1.0 - self.drop_prob
        mask = paddle.bernoulli(paddle.full([x.shape[0]] + [1] * (x.ndim - 1), keep, dtype=x.dtype))
        return lean_backward.drop_path_add(residual, x, mask, keep, divisor)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Layer):
    """fc1 → act → dropout → fc2 → dropout (without dropout, act → fc2 is one lean step, whose backward keeps
    only fc1's output when act is GELU)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Layer] = nn.GELU, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop.p:
            return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        return lean_backward.act_linear(self.fc1(x), self.act, self.fc2)


class Attention(nn.Layer):
    """Multi-head self-attention; ``head_dim`` may differ from ``dim // num_heads``.

    q is scaled by ``qk_scale`` (default ``head_dim ** -0.5``) before ``q @ kᵀ`` (as LV-ViT does,
    for stability). ``out_dim`` is the projection's output width (default ``dim``); ``value_skip``
    adds the values to the output, the residual of T2T-ViT's layers that change the token width
    (it needs ``out_dim == num_heads * head_dim``).
    """

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int | None = None, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, qk_scale: float | None = None,
                 out_dim: int | None = None, value_skip: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        inner = self.head_dim * num_heads
        out_dim = out_dim or dim
        if value_skip and out_dim != inner:
            raise ValueError(f"value_skip needs out_dim ({out_dim}) = num_heads * head_dim ({inner})")
        self.value_skip = value_skip
        self.qkv = nn.Linear(dim, 3 * inner, bias_attr=None if qkv_bias else False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(inner, out_dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        """The heads live transposed, ``[B, heads, head_dim, N]``: one 3-d transpose of the projection replaces
        the 5-d permutation to ``[3, B, heads, N, head_dim]`` and the 4-d one back, whose strided copies
        (forward and backward) Paddle's CPU kernels run ~3x slower than PyTorch's; the matmuls take the
        transposed operands as they are, and the output projection reads the transposed heads directly."""
        B, N, _ = x.shape
        q, k, v = paddle.unbind(self.qkv(x).transpose([0, 2, 1]).reshape([B, 3, self.num_heads, self.head_dim, N]),
                                axis=1)
        attn = F.softmax(paddle.matmul(q * self.scale, k, transpose_x=True), axis=-1)  # q * scale keeps no q
        heads = paddle.matmul(v, self.attn_drop(attn), transpose_y=True).reshape([B, -1, N])  # (attn @ vᵀ)ᵀ
        x = self.proj_drop(paddle.matmul(heads, self.proj.weight, transpose_x=True) + self.proj.bias)
        return x + v.reshape([B, -1, N]).transpose([0, 2, 1]) if self.value_skip else x


class Block(nn.Layer):
    """Pre-norm transformer block; each residual branch is divided by ``skip_lam``.

    ``attention`` replaces the multi-head self-attention (VOLO's outlookers pass their outlook attention)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer: type[nn.Layer] = nn.GELU, norm_eps: float = 1e-5, skip_lam: float = 1.0,
                 qk_scale: float | None = None, attention: nn.Layer | None = None):
        super().__init__()
        self.skip_lam = skip_lam
        self.norm1 = nn.LayerNorm(dim, epsilon=norm_eps)
        self.attn = attention or Attention(dim, num_heads, head_dim, qkv_bias, attn_drop, drop, qk_scale=qk_scale)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, epsilon=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop_path.add_to(x, self.attn(self.norm1(x)), self.skip_lam)
        return self.drop_path.add_to(x, self.mlp(self.norm2(x)), self.skip_lam)
