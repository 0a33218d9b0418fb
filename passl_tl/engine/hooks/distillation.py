"""Knowledge distillation (DeiT): a frozen teacher labels every training batch."""
from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Mapping

import paddle

from ...models import load_weights
from ...models.heads import DistillationHead
from ...utils.dist import is_main
from ...utils.logger import get_logger
from ...utils.registry import HOOKS, MODELS, ConfigError
from .hook import Hook

if TYPE_CHECKING:
    from ..trainer import Trainer


@HOOKS.register
class DistillationHook(Hook):
    """Builds the teacher ``teacher`` (any registered model config, e.g. ``{name: regnety_160}``)
    with the weights ``weights`` (our ``.pdparams`` or an official checkpoint), frozen in eval mode.

    Every iteration its logits on ``trainer.images`` (the batch the student sees) become part of
    the target: ``trainer.targets = {'soft': targets, 'teacher': logits}``, for the student's
    ``DistillationHead``. Priority 9: after Mixup (8), so the teacher sees the mixed images and
    the soft targets are mixed before being wrapped; before MixToken (10), which leaves images and
    targets alone. Under AMP the teacher runs in the trainer's autocast (as officially), its
    logits cast back to float32.
    """

    priority = 9

    def __init__(self, teacher: Mapping[str, Any], weights: str):
        self.teacher_cfg = dict(teacher)
        self.weights = weights
        self.teacher: paddle.nn.Layer | None = None

    def before_run(self, trainer: "Trainer") -> None:
        student = trainer.model_without_ddp
        if not isinstance(getattr(student, "head", None), DistillationHead):
            raise ConfigError(f"DistillationHook needs a student with a DistillationHead (a deit_*_distilled_* "
                              f"model), got {type(getattr(student, 'head', student)).__name__}")
        if student.head.distillation_type == "none":
            raise ConfigError("hooks.distillation with distillation_type 'none': the teacher would be unused; "
                              "remove the hook or choose 'hard' or 'soft'")
        if not os.path.isfile(self.weights):
            raise ConfigError(f"hooks.distillation.weights: teacher weights file {self.weights} not found")
        teacher = MODELS.build(self.teacher_cfg, "hooks.distillation.teacher")
        if teacher.num_classes != student.num_classes:
            raise ConfigError(f"the teacher ({self.teacher_cfg['name']}) has num_classes={teacher.num_classes}, "
                              f"the student {student.num_classes}: they must predict the same classes")
        report = load_weights(teacher, self.weights)
        if is_main():
            get_logger().info(f"distillation teacher {self.teacher_cfg['name']}: {report}")
        teacher.eval()
        for param in teacher.parameters():
            param.stop_gradient = True
        self.teacher = teacher

    def before_train_iter(self, trainer: "Trainer") -> None:
        with paddle.no_grad(), (trainer.amp_context() if trainer.amp_context else contextlib.nullcontext()):
            logits = self.teacher(trainer.images)
        trainer.targets = {"soft": trainer.targets, "teacher": logits.astype("float32")}
