"""The soft-target cross entropy: autograd's value op for op, and a closed-form backward that agrees with
autograd's gradients to float rounding (logits and targets, any leading shape, strided targets, targets that do
not sum to 1)."""
import numpy as np
import paddle
import pytest

from passl_tl.models.losses import soft_cross_entropy


def autograd_loss(logits, target):
    """The loss by plain autograd, op for op as the loss computes its value."""
    shifted = logits - logits.max(-1, keepdim=True).detach()
    return -(target * (shifted - paddle.log(paddle.exp(shifted).sum(-1, keepdim=True)))).sum(-1).mean()


@pytest.mark.parametrize("shape, transposed, mass", [([6, 10], False, 1.0), ([3, 5, 9], False, 1.3),
                                                      ([2, 9, 7], True, 0.7)])
def test_value_and_gradients_match_autograd(shape, transposed, mass):
    paddle.seed(1)
    logits = paddle.randn(shape) * 4
    target = paddle.nn.functional.softmax(paddle.randn(shape if not transposed else [shape[0], shape[2], shape[1]]),
                                          axis=-1 if not transposed else 1) * mass
    if transposed:  # as the token targets arrive: a [B, K, N] slice seen as [B, N, K]
        target = target.transpose([0, 2, 1])
    for t in (logits, target):
        t.stop_gradient = False
    expected, ours = autograd_loss(logits, target), soft_cross_entropy(logits, target)
    assert float(ours) == float(expected)
    for want, got in zip(paddle.grad(expected, [logits, target]), paddle.grad(ours, [logits, target])):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6 * float(want.abs().max()))


def test_only_the_logits_gradient_when_the_target_is_fixed():
    paddle.seed(2)
    logits = paddle.randn([4, 12])
    logits.stop_gradient = False
    target = paddle.nn.functional.softmax(paddle.randn([4, 12]), axis=-1)
    (grad,) = paddle.grad(soft_cross_entropy(logits, target), [logits])
    probs = paddle.nn.functional.softmax(logits, axis=-1)
    np.testing.assert_allclose(grad.numpy(), ((probs - target) / 4).numpy(), rtol=0, atol=1e-7)
    assert soft_cross_entropy(logits.detach(), target).stop_gradient  # nothing to differentiate: plain ops
