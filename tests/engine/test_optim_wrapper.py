"""OptimWrapper: the step the trainer owns (backward, gradient accumulation, loss scaling)."""
import numpy as np
import paddle
import pytest

from passl_tl.engine.optim_wrapper import OptimWrapper


def update(wrapper, loss, iteration=0, iters_per_epoch=1):
    return wrapper.update(loss, iteration, iters_per_epoch, "here", lambda: "")


def test_optim_wrapper_with_and_without_grad_scaler():
    """The GradScaler branch gives the plain update (on CPU Paddle turns loss scaling off,
    so this checks the code path; scaling itself is exercised on GPU)."""
    with pytest.warns(UserWarning, match="AmpScaler"):
        scaler_on_cpu = paddle.amp.GradScaler(init_loss_scaling=1024.0)
    results = []
    for scaler in (None, scaler_on_cpu):
        paddle.seed(0)
        net = paddle.nn.Linear(3, 2)
        opt = paddle.optimizer.SGD(0.1, parameters=net.parameters())
        assert update(OptimWrapper(opt, scaler), (net(paddle.ones([4, 3])) ** 2).mean())
        assert net.weight.grad is None or float(net.weight.grad.abs().sum()) == 0.0  # cleared
        results.append(net.weight.numpy())
    np.testing.assert_array_equal(results[0], results[1])


def test_gradient_accumulation_averages_each_group_including_a_short_last_one():
    """accumulate_steps=2 over an epoch of 3 iterations: the groups are {0, 1} and {2}; each step
    equals an SGD step on the mean loss of its group's samples (SGD: the step scales with the gradient)."""
    parts = [paddle.to_tensor(np.random.RandomState(i).standard_normal((2, 3)).astype("float32")) for i in range(3)]

    def fresh():
        paddle.seed(0)
        net = paddle.nn.Linear(3, 2)
        return net, paddle.optimizer.SGD(0.1, parameters=net.parameters())

    net, opt = fresh()
    for group in ([0, 1], [2]):  # reference: one step per group on the concatenated samples
        x = paddle.concat([parts[i] for i in group])
        update(OptimWrapper(opt), (net(x) ** 2).mean())
    net2, opt2 = fresh()
    wrapper = OptimWrapper(opt2, accumulate_steps=2)
    stepped = [update(wrapper, (net2(x) ** 2).mean(), i, 3) for i, x in enumerate(parts)]
    assert stepped == [False, True, True]
    np.testing.assert_allclose(net2.weight.numpy(), net.weight.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(net2.bias.numpy(), net.bias.numpy(), rtol=1e-6, atol=1e-7)
