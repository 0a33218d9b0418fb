"""A classifier = a backbone producing tokens + a head producing logits (and the training loss)."""
from __future__ import annotations

import contextvars
import inspect
from typing import Annotated, Any, Callable, Mapping, Sequence

import paddle.nn as nn
from paddle import Tensor

from ..batch.pipeline import Batch
from ..utils.registry import BACKBONES, HEADS, MODELS, Component, ConfigError, accepted_arguments


@MODELS.register
class Classifier(nn.Layer):
    """``backbone`` and ``head`` are registry configs; the head gets ``in_channels=backbone.embed_dim``.

    ``forward(x, mix_box)``: eval mode → logits ``[B, num_classes]``; train mode → the head's
    training outputs (for ``loss``; a token-label head's carry the MixToken box).
    """

    def __init__(self, backbone: Annotated[Mapping[str, Any], Component(BACKBONES)],
                 head: Annotated[Mapping[str, Any], Component(HEADS, supplied=("in_channels",))]):
        super().__init__()
        self.backbone = BACKBONES.build(backbone, "model.backbone")
        self.head = HEADS.build(head, "model.head", in_channels=self.backbone.embed_dim)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def img_size(self) -> tuple[int, int] | None:
        """The input size ``(height, width)`` the backbone was built for (None: any, e.g. a CNN)."""
        return getattr(self.backbone, "img_size", None)

    @property
    def grid_size(self) -> tuple[int, int] | None:
        """The backbone's token grid (rows, cols), on which MixToken boxes are drawn."""
        return self.backbone.grid_size

    def forward(self, x: Tensor, mix_box: Sequence[int] | None = None) -> Any:
        if not self.training:
            mix_box = None  # MixToken is a training augmentation (as official)
        return self.head(self.backbone(x, mix_box), self.backbone.grid_size, mix_box)

    def loss(self, outputs: Any, batch: Batch) -> Tensor:
        """The head's loss of ``outputs`` against the batch's targets (and teacher logits, for distillation)."""
        if batch.teacher_logits is None:
            return self.head.loss(outputs, batch.targets)
        return self.head.loss(outputs, batch.targets, batch.teacher_logits)

    def dense_logits(self, x: Tensor) -> Tensor:
        """Eval-mode logits ``[B, K, H, W]`` at every position of the backbone's last feature map
        (its patch tokens for ViTs): the head's per-token classifier applied as a 1x1 conv, as the
        official token-label generator applies its teacher."""
        if self.training:
            raise RuntimeError("dense_logits is an eval-mode computation: call model.eval() first")
        return self.head.dense(self.backbone.feature_map(x))

    def no_weight_decay(self) -> set[str]:
        """Full parameter names (``backbone.pos_embed``, ...) to exclude from weight decay."""
        return {f"{prefix}.{name}"
                for prefix, part in (("backbone", self.backbone), ("head", self.head))
                if hasattr(part, "no_weight_decay")
                for name in part.no_weight_decay()}


def patch_token_map(tokens: Tensor, grid_size: Sequence[int]) -> Tensor:
    """The patch tokens (the last ``rows x cols`` of ``[B, P + N, D]``, prefix tokens dropped) as a
    ``[B, D, rows, cols]`` map."""
    rows, cols = grid_size
    patches = tokens[:, tokens.shape[1] - rows * cols:]
    return patches.transpose([0, 2, 1]).reshape([tokens.shape[0], tokens.shape[2], rows, cols])


def build_preset(backbone: Mapping[str, Any], head: Mapping[str, Any], overrides: Mapping[str, Any],
                 preset: str) -> Classifier:
    """A Classifier from a preset's backbone/head configs plus ``overrides``.

    Each override goes to the backbone or the head, whichever accepts an argument of that name.
    """
    backbone_keys = accepted_arguments(BACKBONES.get(backbone["name"]))[0]
    head_keys = [k for k in accepted_arguments(HEADS.get(head["name"]))[0] if k != "in_channels"]
    backbone, head = dict(backbone), dict(head)
    for key, value in overrides.items():
        if key in backbone_keys:
            backbone[key] = value
        elif key in head_keys:
            head[key] = value
        else:
            raise ConfigError(f"unknown key '{key}' for model '{preset}'; accepted keys: "
                              f"{', '.join(backbone_keys + head_keys)}")
    checking = _CHECKING.get()
    if checking is not None:  # check_preset: the arguments' values, nothing built
        BACKBONES.check(backbone, checking)
        HEADS.check(head, checking, supplied=["in_channels"])
        raise _Checked
    return Classifier(backbone, head)


_CHECKING: contextvars.ContextVar[str | None] = contextvars.ContextVar("passl_tl_model_check", default=None)


class _Checked(Exception):
    """A preset stopped in ``build_preset`` after its checks (``check_preset``)."""


def check_preset(target: Callable, kwargs: Mapping[str, Any], where: str) -> None:
    """``MODELS``' dry run (``Registry.check``): a preset function (``lvvit_tiny``, ...) gives its backbone and
    head configs to ``build_preset``, which checks their values against the backbone's and head's argument
    annotations (``drop_path_rate`` in [0, 1), ``num_classes`` >= 1, ...) and builds nothing; errors name the
    overridden key under ``where`` (e.g. ``model.drop_path_rate``). Classes (``Classifier``) are checked by
    their own annotations."""
    if inspect.isclass(target):
        return
    token = _CHECKING.set(where)
    try:
        target(**kwargs)
    except _Checked:
        pass
    finally:
        _CHECKING.reset(token)


MODELS.dry_run = check_preset
