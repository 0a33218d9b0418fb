"""Memory-lean training steps: the values and gradients of plain autograd, bit for bit, with less kept for backward.

Each public function is one step of a model (the model file calls it where the paper has that step); behind
it a PyLayer keeps a smaller tensor and recomputes the rest in backward, running autograd's own ops or
kernels in autograd's order. The steps that call Paddle's internal gradient kernels (``_C_ops.*_grad``,
positional arguments) take their lean path only where ``enabled`` says so; elsewhere plain autograd runs.
"""
from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import Tensor, _C_ops
from paddle.autograd import PyLayer

# Paddle versions whose gradient kernels (``_C_ops.*_grad``) the lean steps were written and tested against;
# elsewhere plain autograd runs (same numbers, more memory kept for the backward).
LEAN_BACKWARD_VERSIONS = ("3.3.",)


def enabled(training: bool) -> bool:
    """Whether a step may call the gradient kernels itself: training, eagerly (a compiled step differentiates
    its program itself), outside AMP, on a tested Paddle."""
    return (training and paddle.in_dynamic_mode() and paddle.__version__.startswith(LEAN_BACKWARD_VERSIONS)
            and not paddle.amp.is_autocast_enabled())


# ----------------------------------------------------------------------------- steps the models call

def bn_relu_conv(x: Tensor, bn: nn.BatchNorm2D, conv: nn.Conv2D) -> Tensor:
    """``conv(relu(bn(x)))``; in training its backward recomputes ``relu(bn(x))`` rather than keeping it."""
    if enabled(bn.training):
        return _BNReLUConv.apply(x, bn.weight, bn.bias, conv.weight, conv.bias, bn, conv)
    return conv(F.relu(bn(x)))


def act_linear(hidden: Tensor, act: nn.Layer, linear: nn.Linear) -> Tensor:
    """``linear(act(hidden))``; with GELU in training its backward recomputes ``gelu(hidden)`` rather than
    keeping it."""
    if isinstance(act, nn.GELU) and enabled(linear.training):
        return _GeluLinear.apply(hidden, linear.weight, linear.bias, act._approximate)
    return linear(act(hidden))


def drop_path_add(residual: Tensor | None, branch: Tensor, mask: Tensor, keep: float, divisor: float) -> Tensor:
    """``residual + branch * mask / keep / divisor`` (``residual`` None: the scaled branch alone), written into
    one new tensor, whose backward keeps only the per-sample ``mask`` (autograd would keep ``branch`` too)."""
    if not paddle.in_dynamic_mode():  # compiled: autograd's ops (the program decides what it keeps)
        out = branch * mask
        for d in _divisors(keep, divisor):
            out = out / paddle.full([], d, dtype=out.dtype)
        return out if residual is None else out + residual
    if residual is not None and residual.dtype != branch.dtype:  # (AMP) the sum takes the wider type
        return residual + _DropPath.apply(branch, mask, keep, divisor, None)
    return _DropPath.apply(branch, mask, keep, divisor, residual)


def _divisors(keep: float, divisor: float) -> list[float]:
    """What a drop-path branch is divided by, in order (a divisor of 1 skipped, as the eager op order has it)."""
    return [keep] if divisor == 1.0 else [keep, divisor]


# ----------------------------------------------------------------------------- their backward

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


class _GeluLinear(PyLayer):
    """``linear(gelu(h), weight, bias)`` whose backward keeps ``h`` but not ``gelu(h)``, recomputing that
    (elementwise, cheap) instead: one ``[B, N, hidden]`` tensor less per MLP (9 MB a block for LV-ViT-T at
    batch 16). The backward runs autograd's own kernels (add_grad, matmul_grad, gelu_grad), so the
    gradients are bit-identical."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor, approximate: bool) -> Tensor:
        ctx.approximate = approximate
        ctx.needs_grad = [not t.stop_gradient for t in (hidden, weight, bias)]
        ctx.save_for_backward(hidden, weight, bias)
        return F.linear(F.gelu(hidden, approximate), weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias = ctx.saved_tensor()
        # add_grad reads only the shape of its first input (the matmul product, shaped like grad)
        grad_product, grad_bias = _C_ops.add_grad(grad, bias, grad, -1)
        grad_activated, grad_weight = _C_ops.matmul_grad(F.gelu(hidden, ctx.approximate), weight, grad_product,
                                                         False, False)
        grads = (_C_ops.gelu_grad(hidden, grad_activated, ctx.approximate), grad_weight, grad_bias)
        return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_grad))


class _DropPath(PyLayer):
    """``residual + x * mask / keep / divisor`` by these ops in this order (the sum commuted), in place after
    the first, so the values are bit-identical; the backward keeps only ``mask`` and runs autograd's ops."""

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor, keep: float, divisor: float, residual: Tensor | None) -> Tensor:
        ctx.save_for_backward(mask)
        ctx.divisors = _divisors(keep, divisor)
        ctx.needs_grad = [not t.stop_gradient for t in (x, mask, residual) if t is not None]
        out = x * mask
        for d in ctx.divisors:
            out.divide_(paddle.full([], d, dtype=out.dtype))
        return out if residual is None else out.add_(residual)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (mask,) = ctx.saved_tensor()
        grad_x = grad / ctx.divisors[-1]
        for d in ctx.divisors[-2::-1]:
            grad_x.divide_(paddle.full([], d, dtype=grad_x.dtype))
        grads = (grad_x.multiply_(mask), None, grad)
        return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_grad))
