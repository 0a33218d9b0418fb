"""Loss pieces shared by the heads."""
from __future__ import annotations

import paddle
from paddle import Tensor


def log_softmax(logits: Tensor, axis: int = -1) -> Tensor:
    """``log softmax`` along ``axis`` as ``z - log sum exp z`` with ``z = logits - max`` (the max
    is a constant shift, so it carries no gradient).

    The same values as ``F.log_softmax`` (it computes exactly this), but Paddle 3.3's CPU kernel
    of ``F.log_softmax`` runs about 12x slower than these elementwise ops (forward and backward):
    ~330 ms vs ~27 ms for the ``[16, 196, 1000]`` token logits of a batch of 16.
    """
    shifted = logits - logits.max(axis, keepdim=True).detach()
    return shifted - paddle.log(paddle.exp(shifted).sum(axis, keepdim=True))


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over all leading positions of ``-sum_k target_k log softmax(logits)_k``."""
    return -(target * log_softmax(logits, axis=-1)).sum(-1).mean()
