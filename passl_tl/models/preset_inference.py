"""Which preset an official checkpoint is: every registered preset whose names and shapes match."""
from __future__ import annotations

import ast
import functools
import math
import re
from typing import Any, Mapping

import numpy as np
import paddle
import paddle.nn as nn

from ..utils.registry import MODELS, ConfigError
from .weights import POS_EMBED, convert_official

PROBE_SIZE = 224  # image size the presets are probed at to learn their patch stride
CLASSIFIER_LAYERS = ("cls_head", "fc")  # our names of a head's main classifier
# A key that only one family's official checkpoints have -> that family's preset names (checked in order).
FAMILIES = (("patch_embed.conv1.weight", "lvvit_"), ("tokens_to_token.", "t2t_vit_"), ("post_network.", "volo_"),
            ("patch_embed.proj.weight", "deit_"), ("stem.conv.weight", "regnety_"))
BLOCKS = "backbone.blocks."


def family_presets(state: Mapping[str, np.ndarray]) -> list[str]:
    """The registered presets of the family the checkpoint's keys show (empty if none does)."""
    prefix = next((p for key, p in FAMILIES if any(k.startswith(key) for k in state)), None)
    return [name for name in MODELS.names() if prefix and name.startswith(prefix)]


def _lazy(name: str, arguments: Mapping[str, Any]) -> nn.Layer:
    return _lazy_cached(name, repr(sorted(arguments.items())))


@functools.lru_cache(maxsize=64)
def _lazy_cached(name: str, arguments: str) -> nn.Layer:
    with paddle.LazyGuard():  # the architecture without allocating weights; never trained or changed
        return MODELS.build({"name": name, **dict(ast.literal_eval(arguments))})


def _shallow(name: str, arguments: Mapping[str, Any]) -> tuple[nn.Layer, bool]:
    """The preset with a single transformer block where its backbone has ``blocks`` and takes
    ``depth`` (cheap), else whole; and whether it is the whole model."""
    try:
        model = _lazy(name, {**arguments, "depth": 1})
        if hasattr(model.backbone, "blocks"):
            return model, False
    except ConfigError:
        pass
    return _lazy(name, arguments), True


def preset_arguments(name: str, state: Mapping[str, np.ndarray], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of preset ``name`` that the checkpoint determines: ``num_classes`` (from the
    head's classifier) and ``img_size`` (from a square ``pos_embed`` grid), unless overridden."""
    try:
        probe, _ = _shallow(name, {**overrides, "img_size": overrides.get("img_size", PROBE_SIZE)})
    except ConfigError:  # a CNN takes any image size
        probe, _ = _shallow(name, overrides)
    arguments: dict[str, Any] = {}
    for official, ours in getattr(probe.head, "OFFICIAL_NAMES", {}).items():
        if ours in CLASSIFIER_LAYERS and f"{official}.weight" in state:
            arguments["num_classes"] = state[f"{official}.weight"].shape[0]
    grid = getattr(probe.backbone, "grid_size", None)
    if "pos_embed" in state and grid and "img_size" not in overrides:
        shape = state["pos_embed"].shape
        if len(shape) == 4:  # a [1, rows, cols, D] grid (VOLO)
            rows, cols = shape[1:3]
        else:  # [1, prefix + rows·cols, D]
            rows = cols = math.isqrt(shape[1] - probe.backbone.num_prefix_tokens)
            rows = rows if rows * cols == shape[1] - probe.backbone.num_prefix_tokens else None
        if rows:
            sizes = (rows * PROBE_SIZE // grid[0], cols * PROBE_SIZE // grid[1])
            arguments["img_size"] = sizes[0] if sizes[0] == sizes[1] else sizes
    return {**arguments, **overrides}


def matching_presets(state: Mapping[str, np.ndarray], overrides: Mapping[str, Any]) -> list[str]:
    """The presets of the checkpoint's family that, with ``overrides``, have exactly its names and
    shapes (except the token count of pos_embed, which loading resizes to the model's grid).
    Each is first compared without its blocks (a one-block build), then whole."""
    found = []
    for name in family_presets(state):
        try:
            arguments = preset_arguments(name, state, overrides)
            model, whole = _shallow(name, arguments)
            if not whole and not _same_shapes(state, model, skip=BLOCKS):
                continue
            model = model if whole else _lazy(name, arguments)
        except (ConfigError, ValueError, TypeError):
            continue  # an override this preset does not take, or an impossible geometry
        if _same_shapes(state, model):
            found.append(name)
    return found


def _same_shapes(state: Mapping[str, np.ndarray], model: nn.Layer, skip: str | None = None) -> bool:
    def shapes(items):
        return {k: _architecture_shape(k, v) for k, v in items if skip is None or not k.startswith(skip)}
    return shapes(convert_official(state, model).items()) == shapes(model.state_dict().items())


def _architecture_shape(key: str, value: Any) -> list[Any]:
    """A tensor's shape with pos_embed's grid left out: loading resizes it."""
    shape = list(value.shape)
    return [shape[0], *["grid"] * (len(shape) - 2), shape[-1]] if key == POS_EMBED else shape


def describe(state: Mapping[str, np.ndarray]) -> str:
    """The architecture an official state dict shows, for error messages."""
    def dim(key: str, axis: int) -> Any:
        return state[key].shape[axis] if key in state and axis < len(state[key].shape) else "?"

    depth = len({match.group(0) for k in state if (match := _BLOCK.match(k))})
    grid = f"grid {list(state['pos_embed'].shape[1:3])}" if dim("pos_embed", 3) != "?" else f"tokens {dim('pos_embed', 1)}"
    return (f"{len(state)} tensors, embed_dim {dim('cls_token', -1)}, depth {depth}, pos_embed {grid}, "
            f"head {dim('head.weight', 0)} classes")


_BLOCK = re.compile(r"(blocks\.\d+|network\.\d+\.\d+|post_network\.\d+)\.")  # ViT / VOLO block names


def choose_preset(state: Mapping[str, np.ndarray], overrides: Mapping[str, Any], src: str) -> str:
    """The single preset matching the checkpoint, else an error listing those to choose from with ``--model``
    (the checkpoint's family's when no preset matches; ``-o`` is suggested only then). Presets
    that differ only in their default image size (``deit_base_patch16_224`` / ``_384``) build the
    same model once ``img_size`` is read from the checkpoint: the one named after that size wins."""
    found = matching_presets(state, overrides)
    if len(found) > 1:
        sized = [n for n in found if n.endswith(f"_{preset_arguments(n, state, overrides).get('img_size')}")]
        found = sized if len(sized) == 1 else found
    if len(found) > 1:
        raise ConfigError(f"{src} ({describe(state)}) matches several presets ({', '.join(found)}); choose one "
                          f"with --model NAME")
    if not found:
        presets = family_presets(state) or [n for n in MODELS.names() if n.startswith(tuple(p for _, p in FAMILIES))]
        hint = (' — it has an aux_head: a token-labeling checkpoint, add -o "head={name: TokenLabelHead}"'
                if "aux_head.weight" in state and "head" not in overrides else "")
        raise ConfigError(f"{src} ({describe(state)}) matches no registered preset; choose the nearest with "
                          f"--model NAME ({', '.join(presets)}) and give the arguments it differs in with -o, e.g. "
                          f"-o depth=2{hint}")
    return found[0]
