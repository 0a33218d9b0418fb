"""Model zoo: ``build_model`` from a config, ``create_model`` by preset name, ``load_weights``."""
from __future__ import annotations

from typing import Any, Mapping

import paddle.nn as nn

from ..utils.config import Config
from ..utils.registry import MODELS
from . import backbones, heads  # noqa: F401  (registers the backbones, heads and presets)
from .classifier import Classifier
from .weights import load_weights, set_state_strict

__all__ = ["Classifier", "build_model", "create_model", "load_weights", "set_state_strict"]


def build_model(cfg: Mapping[str, Any]) -> nn.Layer:
    """Build from a whole config (its ``model:`` mapping) or from the model mapping itself."""
    if "model" in cfg and "name" not in cfg:
        where = cfg.where("model") if isinstance(cfg, Config) else "model"
        return MODELS.build(cfg["model"], where)
    return MODELS.build(cfg, "model")


def create_model(name: str, **overrides: Any) -> nn.Layer:
    """Build the registered model ``name`` (e.g. ``'lvvit_small'``) with keyword overrides."""
    return MODELS.build({"name": name, **overrides}, f"create_model('{name}')")
