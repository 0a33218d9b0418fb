"""An eval-mode model saved as a Paddle inference program, and a CPU predictor that runs one."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from typing import Callable, Iterator, Sequence

import numpy as np
import paddle
import paddle.nn as nn
from paddle import inference

INPUT_NAME = "x"
# Logged by Paddle's C++ (glog, to file descriptor 2) when a program is traced from a layer using softmax: Paddle's
# own ``F.softmax`` passes ``out=None`` to its op, which PIR does not take. Nothing to act on; the program is right.
PIR_OUT_WARNING = b"Paddle static graph(PIR) not support input out tensor"


def save_program(model: nn.Layer, prefix: str, input_shape: Sequence[int | None],
                 traced: TracedForwards | None = None) -> tuple[str, str]:
    """Save ``model``'s eval forward for float32 inputs of ``input_shape`` (``None``: any size) as
    ``prefix.*``; returns (program file, parameters file). ``traced``: keeps the model's traced program for
    the next save of the same model (see :class:`TracedForwards`).

    ``paddle.jit.save`` converts ``model.forward`` with ``to_static(full_graph=True)`` without
    replacing it, so ``model`` stays a dygraph model; its train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    try:
        spec = paddle.static.InputSpec(list(input_shape), "float32", INPUT_NAME)
        saved = model if traced is None else traced.forward(model)
        with stderr_without(PIR_OUT_WARNING), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="What you save is a function")  # a layer's converted forward
            paddle.jit.save(saved, prefix, input_spec=[spec])
    finally:
        if was_training:
            model.train()
    program = prefix + (".json" if paddle.framework.use_pir_api() else ".pdmodel")
    return program, prefix + ".pdiparams"


class TracedForwards:
    """Models' forwards converted to static once, for models saved again and again (every evaluation's oneDNN
    predictor, of the model and of its EMA): tracing is nearly all of a save's time (LV-ViT-T at 224 px, 2 threads:
    ~2.5 s to trace, ~0.07 s to write the program and the weights). ``paddle.jit.save`` of a layer's converted
    forward saves the program the conversion traced when it first met the input shape, with the weights as they are
    at the save: the files of a save of the layer itself (scope names in the program's debug attributes aside).

    A model's forward is converted anew when its layers (their types and settings, as printed), its sublayers'
    forward hooks or its state tensors (names, shapes, dtypes) change; a model with forward hooks of its own is
    saved as itself each time (its converted forward would leave them out). The conversions keep their models alive:
    drop this object with the models."""

    def __init__(self) -> None:
        self._forwards: dict[nn.Layer, tuple[tuple, Callable]] = {}

    def forward(self, model: nn.Layer) -> nn.Layer | Callable:
        """What ``paddle.jit.save`` is to save for ``model``: its converted forward, converted now if
        ``model`` is new or changed."""
        if model._forward_pre_hooks or model._forward_post_hooks:
            return model
        signature = _architecture(model)
        kept = self._forwards.get(model)
        if kept is None or kept[0] != signature:
            kept = self._forwards[model] = signature, paddle.jit.to_static(model.forward, full_graph=True)
        return kept[1]


def _architecture(model: nn.Layer) -> tuple:
    """What ``model``'s traced program depends on besides the input shape and the weights' values: its layers
    (types and settings, as printed), its sublayers' forward hooks (run while tracing) and its state tensors'
    names (a program refers to its weights by name), shapes and dtypes."""
    hooks = tuple((name, tuple(layer._forward_pre_hooks), tuple(layer._forward_post_hooks))
                  for name, layer in model.named_sublayers())
    tensors = tuple((key, t.name, tuple(t.shape), t.dtype) for key, t in model.to_static_state_dict().items())
    return repr(model), hooks, tensors


@contextlib.contextmanager
def stderr_without(noise: bytes) -> Iterator[None]:
    """Within: what is written to file descriptor 2 (Python and C++ alike) is held back, and written out at the end
    without its lines that contain ``noise`` (all of it lost should the process die within)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = b"".join(line for line in held if noise not in line)
            while kept:
                kept = kept[os.write(2, kept):]


def onednn_available() -> bool:
    """Whether this Paddle build has oneDNN (the fast CPU kernels of Paddle Inference)."""
    return paddle.base.core.is_compiled_with_mkldnn()


def create_cpu_predictor(program: str, params: str, threads: int, onednn: bool = True) -> inference.Predictor:
    """A Paddle Inference predictor on the CPU with ``threads`` math threads, oneDNN kernels and
    their fusion passes if ``onednn`` (else Paddle's native CPU kernels)."""
    for path in (program, params):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"inference program file {path} does not exist")
    config = inference.Config(program, params)
    config.disable_gpu()
    config.disable_glog_info()
    config.set_cpu_math_library_num_threads(threads)
    if onednn:
        if not onednn_available():
            raise RuntimeError("this Paddle build has no oneDNN: use the native CPU kernels")
        config.enable_mkldnn()
    else:
        config.disable_mkldnn()
    return inference.create_predictor(config)


def run_predictor(predictor: inference.Predictor, batch: np.ndarray) -> np.ndarray:
    """Feed ``batch`` (float32) to the predictor's single input; return its first output."""
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(batch.shape))
    handle.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
