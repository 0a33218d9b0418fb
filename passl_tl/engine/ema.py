"""Exponential moving average of a model's weights and buffers (timm ``ModelEmaV2``)."""
from __future__ import annotations

import copy

import paddle


class ModelEMA:
    """Keeps ``ema = decay * ema + (1 - decay) * model`` for every float state entry."""

    def __init__(self, model: paddle.nn.Layer, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model)
        self.module.eval()
        for p in self.module.parameters():
            p.stop_gradient = True

    @paddle.no_grad()
    def update(self, model: paddle.nn.Layer) -> None:
        live = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = live[name]
            if paddle.is_floating_point(ema_value):
                ema_value.set_value(ema_value * self.decay + value.astype(ema_value.dtype) * (1.0 - self.decay))
            else:
                ema_value.set_value(value)

    def state_dict(self) -> dict:
        return self.module.state_dict()
