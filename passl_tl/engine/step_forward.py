"""The forward half of a training step (the model's training outputs and their loss) as one layer, run eagerly
or compiled into a static program (``compile: true``): the optimizer wrapper then differentiates whichever ran."""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator

import paddle
import paddle.nn as nn
from paddle import Tensor

from ..batch.pipeline import Batch
from ..token_labels.mixtoken import box_tensor
from ..utils.logger import get_logger


class StepForward(nn.Layer):
    """``forward(images, targets, teacher_logits, mix_box) -> (loss, outputs)`` of ``model`` (shared, not
    copied), under the AMP context when there is one."""

    def __init__(self, model: nn.Layer, amp_context: Callable | None):
        super().__init__()
        self.model = model
        self.amp_context = amp_context

    def forward(self, images: Tensor, targets: Tensor, teacher_logits: Tensor | None = None,
                mix_box: Any = None) -> tuple[Tensor, Any]:
        with (self.amp_context() if self.amp_context else contextlib.nullcontext()):
            outputs = self.model(images, mix_box=mix_box)
            loss = self.model.loss(outputs, Batch(images, targets, teacher_logits))
        return loss, outputs


def build_step_forward(model: nn.Layer, amp_context: Callable | None, compiled: bool) -> StepForward:
    """A :class:`StepForward`; ``compiled``: traced into a static program once per input shape (a MixToken box
    enters as a tensor, so boxes do not re-trace), whose backward Paddle builds from the program."""
    if compiled and amp_context is not None and paddle.get_device() == "cpu":
        # Eager autocast leaves a CPU step in float32; a program would cast, and CPU BatchNorm has no half kernels
        get_logger().warning("amp on the CPU: the compiled step runs in float32, as the eager step does")
        amp_context = None
    step = StepForward(model, amp_context)
    return paddle.jit.to_static(step, full_graph=True) if compiled else step


def run_step_forward(step_forward: nn.Layer, batch: Batch, compiled: bool, mixes_tokens: bool) -> tuple[Tensor, Any]:
    """``(loss, outputs)`` of a :class:`StepForward` (or its DataParallel) on ``batch``. Compiled: with MixToken the
    box enters as a tensor on every step (the empty box when there is none this step), so every step runs one
    program, under :data:`COMPILED_STEP_FLAGS`."""
    if not compiled:
        return step_forward(batch.images, batch.targets, batch.teacher_logits, batch.mix_box)
    box = box_tensor(batch.mix_box) if mixes_tokens else None
    with paddle_flags(COMPILED_STEP_FLAGS), warnings.catch_warnings():
        # Paddle's own backward construction asks a program value for its place (it has none) and warns
        warnings.filterwarnings("ignore", message="Tensor do not have 'place' interface", category=UserWarning)
        return step_forward(batch.images, batch.targets, batch.teacher_logits, box)


# Paddle 3.3 program passes that change a training step's numbers, off while a compiled step is built and run:
# common-subexpression elimination merges random ops of the same shape (every drop-path mask of a width would be
# one draw), the in-place pass lets an op overwrite a program output the loss reads (the logits came back as
# their log softmax); and ops run in program order, so random draws come in the eager step's order.
COMPILED_STEP_FLAGS = {"FLAGS_enable_cse_in_dy2st": False, "FLAGS_pir_apply_inplace_pass": False,
                       "FLAGS_new_executor_sequential_run": True}


@contextlib.contextmanager
def paddle_flags(flags: dict[str, Any]) -> Iterator[None]:
    """Paddle ``flags`` set inside the block, restored after."""
    before = paddle.get_flags(list(flags))
    paddle.set_flags(flags)
    try:
        yield
    finally:
        paddle.set_flags(before)
