"""A training batch and the ordered transforms that build it from what the loader yields.

The loader gives ``(images, labels)``; the stages below turn that into what the step consumes, in a
fixed order: targets from the labels, then image-level Mixup/CutMix (mixing images and targets), then
the teacher's logits (on the images the student will see), then the MixToken box (tokens are mixed
inside the model, on its token grid). Each stage is optional and named in the config's ``batch:``
section; the order is this module's, not the config's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import paddle

from ..utils.registry import BATCH_TRANSFORMS, ConfigError
from ..utils.seeding import derived_seed

MixBox = tuple[int, int, int, int]  # (x1, y1, x2, y2) on the token grid: rows x1:x2, columns y1:y2
STAGES = ("target", "mixup", "teacher", "mixtoken")


@dataclasses.dataclass(frozen=True)
class Batch:
    """One training batch as it reaches the step.

    ``targets``: the loader's labels until the target stage turns them into soft targets
    (``[B, K]``) or token-label targets (``[B, K, 2 + N]``). ``teacher_logits``: set by the teacher
    stage. ``mix_box``: set by MixToken (None: no token mixing this step).
    """

    images: paddle.Tensor
    targets: paddle.Tensor
    teacher_logits: paddle.Tensor | None = None
    mix_box: MixBox | None = None

    @property
    def size(self) -> int:
        return int(self.images.shape[0])

    def replace(self, **changes: Any) -> "Batch":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Step:
    """Where a batch sits in the run: its per-step random streams derive from (seed, rank, step)."""

    seed: int
    rank: int
    global_step: int

    def rng(self, stream: int) -> np.random.RandomState:
        return np.random.RandomState(derived_seed(self.seed, self.rank, self.global_step, stream))


class BatchTransform:
    """A stage of the batch pipeline. ``bind`` checks it against the model (and takes the AMP context)
    when the trainer is built, so a misfit fails before training; ``__call__`` transforms one batch."""

    stream: int = 0  # tag of the transform's per-step random stream (distinct per transform)

    def bind(self, model: paddle.nn.Layer, amp_context: Callable | None) -> None:
        """Check the transform fits ``model``; take what it needs from it (classes, token grid)."""

    def __call__(self, batch: Batch, step: Step) -> Batch:
        raise NotImplementedError


class BatchPipeline:
    """The configured stages, in :data:`STAGES` order, bound to the model."""

    def __init__(self, stages: Mapping[str, BatchTransform | None]):
        _check_stage_names(stages, "the batch pipeline")
        self.stages = {name: stages[name] for name in STAGES if stages.get(name) is not None}
        if "mixup" in self.stages and "target" not in self.stages:
            raise ConfigError("batch.mixup mixes soft targets: configure batch.target (TokenLabelTargets, or "
                              "SoftTargets for plain class labels)")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, source: str) -> "BatchPipeline":
        """The config's ``batch:`` section (``source``: the config file, for messages)."""
        cls.check_config(cfg, source)
        return cls({name: BATCH_TRANSFORMS.build(spec, f"batch.{name} of {source}")
                    for name, spec in (cfg or {}).items() if spec})

    @staticmethod
    def check_config(cfg: Mapping[str, Any] | None, source: str) -> None:
        """``from_config``'s checks (known stages, registered transforms, their keys) without building."""
        _check_stage_names(cfg or {}, f"batch of {source}")
        for name, spec in (cfg or {}).items():
            if spec:
                BATCH_TRANSFORMS.check(spec, f"batch.{name} of {source}")

    def bind(self, model: paddle.nn.Layer, amp_context: Callable | None = None) -> "BatchPipeline":
        for transform in self.stages.values():
            transform.bind(model, amp_context)
        return self

    def get(self, name: str) -> BatchTransform | None:
        return self.stages.get(name)

    def __call__(self, images: paddle.Tensor, labels: paddle.Tensor, step: Step) -> Batch:
        batch = Batch(images, labels)
        for transform in self.stages.values():
            batch = transform(batch, step)
        return batch


def _check_stage_names(names: Iterable[str], where: str) -> None:
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        raise ConfigError(f"unknown batch stage '{unknown[0]}' in {where}; stages, in the order they run: "
                          f"{', '.join(STAGES)}")
