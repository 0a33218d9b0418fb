"""Optimizers built from config, with the usual no-weight-decay parameter groups."""
from __future__ import annotations

import paddle

from ..utils.registry import OPTIMIZERS, NonNegativeFloat, PositiveFloat, Rate


def decay_parameter_names(model: paddle.nn.Layer) -> set[str]:
    """Paddle names of the parameters that get weight decay.

    As timm's ``add_weight_decay``: no decay for 1-D parameters (biases, norms), nor for
    those the model lists in ``no_weight_decay()`` (e.g. ``pos_embed``, ``cls_token``).
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {p.name for n, p in model.named_parameters()
            if not p.stop_gradient and p.ndim > 1 and n not in skip}


@OPTIMIZERS.register
def AdamW(model: paddle.nn.Layer, lr: NonNegativeFloat = 1e-3, weight_decay: NonNegativeFloat = 0.05,
          betas: tuple[Rate, Rate] = (0.9, 0.999), eps: PositiveFloat = 1e-8,
          clip_grad: NonNegativeFloat | None = None) -> paddle.optimizer.Optimizer:
    """AdamW (decoupled weight decay) with no decay on 1-D params, ``pos_embed``, ``cls_token``;
    ``clip_grad`` clips the global gradient norm (None or 0: no clipping)."""
    decay = decay_parameter_names(model)
    return paddle.optimizer.AdamW(
        learning_rate=lr, beta1=betas[0], beta2=betas[1], epsilon=eps,
        parameters=[p for p in model.parameters() if not p.stop_gradient],
        weight_decay=weight_decay, apply_decay_param_fun=lambda name: name in decay,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(clip_grad) if clip_grad else None)
