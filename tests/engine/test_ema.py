"""Model EMA: timm's update formula, one EMA step per optimizer step."""
from types import SimpleNamespace

import numpy as np
import paddle

from passl_tl.engine.ema import ModelEMA
from passl_tl.engine.hooks.ema import EMAHook


def test_ema_update_formula():
    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Linear(3, 2), paddle.nn.BatchNorm1D(2))
    ema = ModelEMA(net, decay=0.9)
    before = {k: v.numpy().copy() for k, v in ema.state_dict().items()}
    for p in net.parameters():
        p.set_value(p + 1.0)
    ema.update(net)
    live = net.state_dict()
    for k, v in ema.state_dict().items():
        np.testing.assert_allclose(v.numpy(), 0.9 * before[k] + 0.1 * live[k].numpy(), rtol=1e-6, atol=1e-7)


def test_ema_moves_once_per_optimizer_step():
    net = paddle.nn.Linear(2, 2)
    hook = EMAHook(decay=0.5)
    trainer = SimpleNamespace(model_without_ddp=net, ema=None)
    hook.before_run(trainer)
    before = hook.ema.module.weight.numpy().copy()
    net.weight.set_value(net.weight + 1.0)
    hook.after_train_iter(trainer, None, SimpleNamespace(stepped=False))  # no optimizer step: no EMA step
    np.testing.assert_array_equal(hook.ema.module.weight.numpy(), before)
    hook.after_train_iter(trainer, None, SimpleNamespace(stepped=True))
    np.testing.assert_allclose(hook.ema.module.weight.numpy(), before + 0.5, rtol=1e-6)
