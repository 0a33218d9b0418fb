"""The eval forward of a model: the dygraph layer itself, or on the CPU the same layer compiled
into a Paddle Inference program that runs on oneDNN kernels (3-4x faster: Paddle's dygraph CPU
kernels do not use oneDNN).

``eval_backend`` (config key): ``"dygraph"``, ``"onednn"`` or ``"auto"`` (oneDNN on the CPU
without AMP when the Paddle build has it, else dygraph). oneDNN sums in another order than the
dygraph kernels: logits agree to ~1e-6 relative, not bit for bit.

On the CPU both backends run one image at a time, so that an image's logits do not depend on the
batch it arrives in (validation batch size, process count, last partial batch). Batched, they do:
the GEMM kernels (MKL's sgemm in dygraph, oneDNN's ``gemm:jit`` matmuls of attention) choose their
blocking, and with it the summation order, from the row count M = images x tokens and a row's place
in its tile, which moves logits by up to ~3e-7 and can flip top-1 on near-ties. Padding batches to
a fixed size does not help (an image's place in the tile still varies). The price: Paddle
Inference's fixed cost per run (~6 ms) and batch-1 GEMMs that split less well over threads, ~10-25%
of eval speed for LV-ViT-T at 224 px, about 3x at the 64 px demo. oneDNN's sums also depend on the
thread count (dygraph's at batch 1 do not): bit-identical oneDNN results need the same ``threads``.
On a GPU images stay batched (cuBLAS/cuDNN are not bit-stable across shapes either, and a GPU needs
batches).
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable

import numpy as np
import paddle

from ..utils.inference import TracedForwards, create_cpu_predictor, onednn_available, run_predictor, save_program
from ..utils.registry import ConfigError
from ..utils.threads import cpu_threads, set_cpu_threads

EVAL_BACKENDS = ("auto", "dygraph", "onednn")
Forward = Callable[[paddle.Tensor], paddle.Tensor]  # images -> logits


def resolve_eval_backend(backend: str, amp: bool) -> str:
    """``"dygraph"`` or ``"onednn"`` for the configured ``backend`` on the current device."""
    if backend not in EVAL_BACKENDS:
        raise ConfigError(f"eval_backend must be one of {', '.join(EVAL_BACKENDS)}, got {backend!r}")
    on_cpu = paddle.get_device().startswith("cpu")
    if backend == "auto":
        return "onednn" if on_cpu and not amp and onednn_available() else "dygraph"
    if backend == "onednn" and not (on_cpu and onednn_available()):
        raise ConfigError(f"eval_backend 'onednn' needs the CPU and a Paddle build with oneDNN "
                          f"(device {paddle.get_device()}, oneDNN {onednn_available()})")
    if backend == "onednn" and amp:
        raise ConfigError("eval_backend 'onednn' runs fp32: turn amp off or use eval_backend 'dygraph'")
    return backend


class OneDNNForward:
    """Calls ``model``'s eval forward through a Paddle Inference predictor with oneDNN, one image at a
    time (see the module docstring). The program is saved from the weights as they are at the first
    call (for each image size met), so build one per evaluation; ``traced`` keeps the model's traced
    program for the next evaluations (their saves only write it with the weights of the time, see
    ``TracedForwards``). The predictor is compiled anew each evaluation: its IR passes fold the weights
    into the program (conv+BN, fused matmuls), and Paddle Inference has no way to replace them. It uses the
    CPU thread count set by ``set_cpu_threads``."""

    def __init__(self, model: paddle.nn.Layer, traced: TracedForwards | None = None):
        self.model = model
        self.traced = traced
        self._predictors: dict[tuple[int, ...], object] = {}

    def __call__(self, images: paddle.Tensor) -> paddle.Tensor:
        key = tuple(images.shape[1:])
        if key not in self._predictors:
            with tempfile.TemporaryDirectory(prefix="passl_tl_eval_") as tmp:  # read when the predictor is created
                program, params = save_program(self.model, os.path.join(tmp, "model"), [1, *key], self.traced)
                self._predictors[key] = create_cpu_predictor(program, params, cpu_threads(), onednn=True)
        batch = images.numpy()
        try:
            logits = [run_predictor(self._predictors[key], batch[i:i + 1]) for i in range(len(batch))]
        finally:
            set_cpu_threads(cpu_threads())  # a predictor run leaves the math library's threads set its way
        return paddle.to_tensor(np.concatenate(logits))


def one_image_at_a_time(forward: Forward) -> Forward:
    """``forward`` applied to each image of a batch on its own, the logits concatenated in order."""
    def run(images: paddle.Tensor) -> paddle.Tensor:
        return paddle.concat([forward(images[i:i + 1]) for i in range(images.shape[0])])
    return run


def eval_forward(model: paddle.nn.Layer, backend: str, amp_context: Callable | None = None,
                 traced: TracedForwards | None = None) -> Forward:
    """``images -> logits`` for ``model`` in eval mode on the resolved ``backend``; on the CPU each
    image's logits are independent of the others in its batch. ``traced``: see ``OneDNNForward``."""
    if resolve_eval_backend(backend, amp_context is not None) == "onednn":
        return OneDNNForward(model, traced)

    def forward(images: paddle.Tensor) -> paddle.Tensor:
        if amp_context is None:
            return model(images)
        with amp_context():
            return model(images)
    return one_image_at_a_time(forward) if paddle.get_device().startswith("cpu") else forward
