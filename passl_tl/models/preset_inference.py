"""Which preset an official checkpoint is: arguments read from its shapes, presets matched by shape."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import paddle

from ..utils.registry import MODELS, ConfigError
from .weights import POS_EMBED, convert_official

PRESET_PREFIX = "lvvit_"


def checkpoint_settings(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The preset arguments an official state dict determines: patch_size (from the patch projection),
    img_size (from a square pos_embed grid) and num_classes (from the head), where present."""
    settings: dict[str, Any] = {}
    if "patch_embed.proj.weight" in state:
        settings["patch_size"] = 2 * state["patch_embed.proj.weight"].shape[-1]
    if "pos_embed" in state and "patch_size" in settings:
        side = math.isqrt(state["pos_embed"].shape[1] - 1)
        if side * side == state["pos_embed"].shape[1] - 1:
            settings["img_size"] = side * settings["patch_size"]
    if "head.weight" in state:
        settings["num_classes"] = state["head.weight"].shape[0]
    return settings


def matching_presets(state: Mapping[str, np.ndarray], overrides: Mapping[str, Any]) -> list[str]:
    """The LV-ViT presets that, with ``overrides``, have exactly the checkpoint's names and shapes
    (except the token count of pos_embed, which loading resizes to the model's grid).

    Presets are built without allocating weights: first without blocks (cheap, rejects most), then whole.
    """
    return [name for name in MODELS.names() if name.startswith(PRESET_PREFIX)
            and _same_shapes(name, {**overrides, "depth": 0}, state, with_blocks=False)
            and _same_shapes(name, overrides, state, with_blocks=True)]


def _same_shapes(name: str, overrides: Mapping[str, Any], state: Mapping[str, np.ndarray], with_blocks: bool) -> bool:
    with paddle.LazyGuard():
        model = MODELS.build({"name": name, **overrides})
    have = {k: _architecture_shape(k, v) for k, v in convert_official(state, model).items()
            if with_blocks or not k.startswith("backbone.blocks.")}
    return have == {k: _architecture_shape(k, v) for k, v in model.state_dict().items()}


def _architecture_shape(key: str, value: Any) -> list[Any]:
    shape = list(value.shape)
    return shape[:1] + ["tokens"] + shape[2:] if key == POS_EMBED and len(shape) == 3 else shape


def describe(state: Mapping[str, np.ndarray]) -> str:
    """The architecture an official state dict shows, for error messages."""
    def dim(key: str, axis: int) -> Any:
        return state[key].shape[axis] if key in state else "?"

    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    return (f"embed_dim {dim('cls_token', -1)}, depth {depth}, stem_channels {dim('patch_embed.conv1.weight', 0)}, "
            f"pos_embed tokens {dim('pos_embed', 1)}, num_classes {dim('head.weight', 0)}")


def choose_preset(state: Mapping[str, np.ndarray], overrides: Mapping[str, Any], src: str) -> str:
    """The single preset matching the checkpoint, else an error asking for ``--model``."""
    found = matching_presets(state, overrides)
    if len(found) != 1:
        what = f"matches several presets ({', '.join(found)})" if found else "matches no LV-ViT preset"
        raise ConfigError(f"{src} ({describe(state)}) {what}; choose one with --model NAME "
                          f"(and -o for other arguments, e.g. -o depth=2)")
    return found[0]
