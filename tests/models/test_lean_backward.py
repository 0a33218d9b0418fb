"""Lean backward steps (models/lean_backward.py): bit-identical to autograd, and only on tested Paddle versions."""
import numpy as np
import paddle
import paddle.nn as nn

from passl_tl.models import lean_backward
from passl_tl.models.backbones.lvvit import ConvStem
from passl_tl.models.layers import DropPath, Mlp


def _output_and_grads(fn, x, params):
    """``fn(x)`` and the gradients of ``sum(fn(x) * w)`` (fixed random ``w``) for ``x`` and ``params``."""
    x = paddle.to_tensor(x, stop_gradient=False)
    out = fn(x)
    w = paddle.to_tensor(np.random.RandomState(6).standard_normal(out.shape).astype("float32"))
    return [out.numpy()] + [g.numpy() for g in paddle.grad((out * w).sum(), [x, *params])]


def test_lean_backward_of_drop_path_and_mlp_is_bit_identical_to_autograd():
    """DropPath (alone and added to a residual) and the MLP keep less for backward (their own PyLayer
    backward), with the same values."""
    x = np.random.RandomState(5).standard_normal((8, 7, 6)).astype("float32")
    layer = DropPath(0.3)
    layer.train()

    def plain_drop_path(t):
        return t * paddle.bernoulli(paddle.full([8, 1, 1], 1.0 - 0.3)) / (1.0 - 0.3)

    paddle.seed(0)
    got = _output_and_grads(layer, x, [])
    paddle.seed(0)
    want = _output_and_grads(plain_drop_path, x, [])
    assert 0 < (got[0] == 0).all((1, 2)).sum() < 8  # some samples dropped, some kept
    for g, e in zip(got, want):
        np.testing.assert_array_equal(g, e)
    for divisor in (1.0, 3.0):  # a block's residual step: residual + drop_path(branch) / skip_lam
        paddle.seed(0)
        got = _output_and_grads(lambda t: layer.add_to(t * 3.0, t.tanh(), divisor), x, [])
        paddle.seed(0)
        want = _output_and_grads(lambda t: t * 3.0 + plain_drop_path(t.tanh()) / divisor, x, [])
        for g, e in zip(got, want):
            np.testing.assert_array_equal(g, e)

    paddle.seed(1)
    mlp = Mlp(6, 12)
    mlp.train()
    params = [mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias]
    assert mlp(paddle.to_tensor(x, stop_gradient=False)).grad_fn.name() != "AddGradNode"  # the lean path
    got = _output_and_grads(mlp, x, params)
    want = _output_and_grads(lambda t: mlp.fc2(mlp.act(mlp.fc1(t))), x, params)
    for g, e in zip(got, want):
        np.testing.assert_array_equal(g, e)


def test_lean_backward_of_conv_stem_is_bit_identical_to_autograd():
    """The stem's BN → ReLU → conv steps recompute ReLU(BN) in backward: same values, grads and BN statistics."""
    x = np.random.RandomState(7).standard_normal((3, 3, 16, 16)).astype("float32")
    paddle.seed(2)
    stem = ConvStem(patch_size=4, in_chans=3, embed_dim=8, channels=5)
    stem.train()
    params = list(stem.parameters())
    trainable = [p for p in params if not p.stop_gradient]
    start = [p.numpy() for p in params]

    def plain(t):
        for conv, bn in ((stem.conv1, stem.bn1), (stem.conv2, stem.bn2), (stem.conv3, stem.bn3)):
            t = nn.functional.relu(bn(conv(t)))
        return stem.proj(t)

    got = _output_and_grads(stem, x, trainable) + [p.numpy() for p in params]
    for p, value in zip(params, start):
        p.set_value(value)
    want = _output_and_grads(plain, x, trainable) + [p.numpy() for p in params]
    assert len(got) == len(want) == 2 + len(trainable) + len(params)
    for g, e in zip(got, want):
        np.testing.assert_array_equal(g, e)
    assert stem(paddle.to_tensor(x)).grad_fn.name() != "AddGradNode"  # the lean path was taken


def test_lean_backward_only_on_tested_paddle_versions(monkeypatch):
    """Other Paddle versions (whose internal grad kernels may differ) take plain autograd."""
    x = paddle.to_tensor(np.ones((2, 3, 6), np.float32), stop_gradient=False)
    mlp = Mlp(6, 12)
    mlp.train()
    assert lean_backward.enabled(True) and not lean_backward.enabled(False)
    monkeypatch.setattr(lean_backward, "LEAN_BACKWARD_VERSIONS", ("9.9.",))
    assert not lean_backward.enabled(True)
    assert mlp(x).grad_fn.name() == "AddGradNode"  # fc2's bias add: the plain path
