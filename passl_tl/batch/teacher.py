"""Knowledge distillation (DeiT): a frozen teacher labels every training batch."""
from __future__ import annotations

import contextlib
import os
from typing import Annotated, Any, Callable, Mapping

import paddle

from ..models import load_weights
from ..models.heads import DistillationHead
from ..utils.dist import is_main
from ..utils.logger import get_logger
from ..utils.registry import BATCH_TRANSFORMS, MODELS, Component, ConfigError
from .pipeline import Batch, BatchTransform, Step


@BATCH_TRANSFORMS.register
class Teacher(BatchTransform):
    """Builds ``teacher`` (any registered model config, e.g. ``{name: regnety_160}``) with the weights
    ``weights`` (our ``.pdparams`` or an official checkpoint), frozen in eval mode, when bound to a
    student with a ``DistillationHead``.

    Every step its logits on the batch's images (after Mixup/CutMix: the images the student sees)
    become ``Batch.teacher_logits``. Under AMP the teacher runs in the trainer's autocast (as
    officially), its logits cast back to float32.
    """

    def __init__(self, teacher: Annotated[Mapping[str, Any], Component(MODELS)], weights: str):
        self.teacher_cfg = dict(teacher)
        self.weights = weights
        self.teacher: paddle.nn.Layer | None = None
        self.amp_context: Callable | None = None

    def bind(self, model: paddle.nn.Layer, amp_context: Callable | None) -> None:
        head = getattr(model, "head", model)
        if not isinstance(head, DistillationHead):
            raise ConfigError(f"batch.teacher needs a student with a DistillationHead (a deit_*_distilled_* model), "
                              f"got {type(head).__name__}")
        if head.distillation_type == "none":
            raise ConfigError("batch.teacher with distillation_type 'none': the teacher would be unused; remove it "
                              "or choose 'hard' or 'soft'")
        if not os.path.isfile(self.weights):
            raise ConfigError(f"batch.teacher.weights: teacher weights file {self.weights} not found")
        teacher = MODELS.build(self.teacher_cfg, "batch.teacher.teacher")
        if teacher.num_classes != model.num_classes:
            raise ConfigError(f"the teacher ({self.teacher_cfg['name']}) has num_classes={teacher.num_classes}, "
                              f"the student {model.num_classes}: they must predict the same classes")
        report = load_weights(teacher, self.weights)
        if is_main():
            get_logger().info(f"distillation teacher {self.teacher_cfg['name']}: {report}")
        teacher.eval()
        for param in teacher.parameters():
            param.stop_gradient = True
        self.teacher, self.amp_context = teacher, amp_context

    def __call__(self, batch: Batch, step: Step) -> Batch:
        with paddle.no_grad(), (self.amp_context() if self.amp_context else contextlib.nullcontext()):
            logits = self.teacher(batch.images)
        return batch.replace(teacher_logits=logits.astype("float32"))
