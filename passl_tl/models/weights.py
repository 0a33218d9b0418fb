"""Load our ``.pdparams`` or an official PyTorch checkpoint or ``.safetensors`` file into a model, strictly.

The only tolerated differences: a ``backbone.pos_embed`` for another token grid is resized (fine-tuning
at another image size) and, when asked, head tensors of another shape are skipped (another dataset).
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import numpy as np
import paddle
import paddle.nn as nn

from ..utils.logger import get_logger
from ..utils.paddle_file import load_paddle_file
from ..utils.registry import ConfigError
from ..utils.safetensors_file import load_safetensors
from ..utils.torch_checkpoint import load_torch_file
from .pos_embed import patch_grid, resize_pos_embed, resize_pos_grid

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin")  # .bin: the Hugging Face hub's pytorch_model.bin
SAFETENSORS_SUFFIX = ".safetensors"
OFFICIAL_SUFFIXES = TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,)
# Where a training checkpoint keeps the weights, in order of preference.
CHECKPOINT_KEYS = ("model", "state_dict", "state_dict_ema")
EMA_KEY = "state_dict_ema"
BN_BUFFERS = {"running_mean": "_mean", "running_var": "_variance"}
POS_EMBED = "backbone.pos_embed"


def load_weights(model: nn.Layer, path: str, skip_mismatched_head: bool = False, use_ema: bool = False) -> str:
    """Load ``path`` into the Classifier ``model``: every key must match by name and shape, except
    that a ``backbone.pos_embed`` for another grid is resized and, with ``skip_mismatched_head``,
    ``head.*`` tensors of another shape are left at the model's values. ``use_ema`` takes an
    official checkpoint's ``state_dict_ema``. Returns a short report."""
    file_keys: dict[str, str] = {}
    if path.endswith(".pdparams"):
        if use_ema:
            raise ConfigError(f"{path}: use_ema applies to official checkpoints; our EMA weights are their "
                              f"own files (final_ema.pdparams, best_ema.pdparams)")
        state, layout = dict(load_paddle_file(path)), "paddle state dict"
    elif path.endswith(OFFICIAL_SUFFIXES):
        official, layout = read_official_state(path, use_ema=use_ema)
        file_keys = {ours: theirs for theirs, ours in official_key_map(official, model).items()}
        state = convert_official(official, model)
    else:
        raise ConfigError(f"unknown weights format {path}: expected .pdparams or {', '.join(OFFICIAL_SUFFIXES)}")
    notes, kept = adapt_state(model, state, path, skip_mismatched_head)
    set_state_strict(model, state, path, file_keys)
    return "; ".join([f"loaded {len(state) - len(kept)} tensors from {os.path.basename(path)} ({layout})", *notes])


def read_official_state(path: str, use_ema: bool = False) -> tuple[dict[str, np.ndarray], str]:
    """The official (PyTorch-layout) state dict in ``path`` and where it was found: a ``.safetensors``
    file holds a plain state dict, any other file is read as ``torch.save``'s (``select_state_dict``)."""
    if path.endswith(SAFETENSORS_SUFFIX):
        state, _ = select_state_dict(load_safetensors(path), path, use_ema=use_ema)
        return state, "safetensors state dict"
    return select_state_dict(load_torch_file(path), path, use_ema=use_ema)


def adapt_state(model: nn.Layer, state: dict[str, Any], path: str, skip_mismatched_head: bool = False
                ) -> tuple[list[str], list[str]]:
    """Fit ``state`` (our names) to the Classifier ``model`` in place: resize ``backbone.pos_embed``
    to the model's token grid; with ``skip_mismatched_head``, replace ``head.*`` tensors of another
    shape by the model's own. Returns the changes made (also logged) and the keys so replaced."""
    expected = model.state_dict()
    notes = _fit_pos_embed(model, state, expected, path)
    kept = [k for k in state if k.startswith("head.") and k in expected
            and list(state[k].shape) != list(expected[k].shape)] if skip_mismatched_head else []
    if kept:
        notes.append("kept the model's " + ", ".join(f"{k} (file {list(state[k].shape)}, model "
                                                       f"{list(expected[k].shape)})" for k in kept))
        state.update({k: expected[k] for k in kept})
    for note in notes:
        get_logger().info(f"{path}: {note}")
    return notes, kept


def set_state_strict(model: nn.Layer, state: Mapping[str, Any], path: str,
                     file_keys: Mapping[str, str] | None = None) -> None:
    """``model.set_state_dict(state)`` that fails, naming ``path`` and the keys (with the file's own
    names from ``file_keys`` where they differ), unless every key matches by name and shape;
    values are cast to the model's dtypes."""
    expected = model.state_dict()
    _check_compatible(model, expected, state, path, file_keys or {})
    model.set_state_dict({k: _to_dtype(v, expected[k].dtype) for k, v in state.items()})


def select_state_dict(checkpoint: Any, path: str, use_ema: bool = False) -> tuple[dict[str, np.ndarray], str]:
    """The state dict inside an official checkpoint: plain, or under the first of ``CHECKPOINT_KEYS``
    present (``state_dict_ema`` only, with ``use_ema``). A DataParallel ``module.`` prefix is removed."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(checkpoint).__name__}")
    keys = (EMA_KEY,) if use_ema else CHECKPOINT_KEYS
    if not use_ema and all(isinstance(v, np.ndarray) for v in checkpoint.values()):
        return _strip_module_prefix(checkpoint), "plain torch state dict"
    for key in keys:
        if isinstance(checkpoint.get(key), Mapping):
            return _strip_module_prefix(checkpoint[key]), f"torch checkpoint['{key}']"
    raise ValueError(f"{path}: no state dict found; top-level keys: {_first(list(map(str, checkpoint)))} "
                     f"(expected {'' if use_ema else 'tensors or '}one of {', '.join(keys)})")


def official_key_map(keys: Iterable[str], model: nn.Layer) -> dict[str, str]:
    """Official (PyTorch) name -> ours for every key that has a counterpart (``num_batches_tracked``
    has none). Keys under one of the head's ``OFFICIAL_NAMES`` prefixes (e.g. ``head``, ``aux_head``,
    ``head_dist``) go to the Classifier's head, the rest to its backbone; BatchNorm running stats
    are renamed."""
    heads = {official: f"head.{ours}" for official, ours in getattr(model.head, "OFFICIAL_NAMES", {}).items()}
    prefixes = sorted(heads, key=len, reverse=True)
    mapping = {}
    for key in keys:
        if key.endswith(".num_batches_tracked"):
            continue
        prefix = next((p for p in prefixes if key.startswith(p + ".")), None)
        ours = heads[prefix] + key[len(prefix):] if prefix else f"backbone.{key}"
        owner, _, leaf = ours.rpartition(".")
        mapping[key] = f"{owner}.{BN_BUFFERS.get(leaf, leaf)}"
    return mapping


def linear_weight_names(model: nn.Layer) -> set[str]:
    """Names of the model's Linear weights: stored ``[out, in]`` by PyTorch, ``[in, out]`` by Paddle."""
    return {f"{name}.weight" for name, layer in model.named_sublayers() if isinstance(layer, nn.Linear)}


def convert_official(state: Mapping[str, np.ndarray], model: nn.Layer) -> dict[str, np.ndarray]:
    """Official names and layouts -> ours (``official_key_map``; Linear weights transposed)."""
    linear_weights = linear_weight_names(model)
    return {ours: state[key].T if ours in linear_weights else state[key]
            for key, ours in official_key_map(state, model).items()}


def _strip_module_prefix(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _fit_pos_embed(model: nn.Layer, state: dict[str, Any], expected: Mapping[str, Any], path: str) -> list[str]:
    """Resize the file's position embedding when only its grid differs from the model's: ``[1, p + N, D]``
    token tables (ViTs) or ``[1, rows, cols, D]`` grids (VOLO)."""
    if POS_EMBED not in state or POS_EMBED not in expected:
        return []
    old, new = list(state[POS_EMBED].shape), list(expected[POS_EMBED].shape)
    if old == new or len(old) != len(new) or len(old) not in (3, 4) or old[0] != 1 or old[-1] != new[-1]:
        return []  # equal, or a difference the strict check reports
    value = state[POS_EMBED]
    value = value.numpy() if isinstance(value, paddle.Tensor) else value
    grid = tuple(model.grid_size)
    if len(old) == 4:
        old_grid = tuple(old[1:3])
        state[POS_EMBED] = resize_pos_grid(value, grid)
    else:
        prefix = model.backbone.num_prefix_tokens
        old_grid = patch_grid(old[1] - prefix, grid)
        if old_grid is None:
            raise ValueError(f"cannot load {path} into {type(model).__name__}; {POS_EMBED} (file {old}, model {new}) "
                             f"cannot be resized: its {old[1] - prefix} patch positions after the {prefix} prefix "
                             f"token(s) form neither a square grid nor one of the model's {grid[0]}x{grid[1]} "
                             f"aspect ratio")
        state[POS_EMBED] = resize_pos_embed(value, old_grid, grid, prefix)
    return [f"resized {POS_EMBED} from {old_grid[0]}x{old_grid[1]} to {grid[0]}x{grid[1]}"]


def _to_dtype(value: Any, dtype: paddle.dtype) -> paddle.Tensor:
    """``value`` as a tensor of the model's dtype (e.g. half-precision checkpoints into float32)."""
    tensor = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(value)
    return tensor if tensor.dtype == dtype else tensor.astype(dtype)


def _check_compatible(model: nn.Layer, expected: Mapping[str, Any], state: Mapping[str, Any], path: str,
                      file_keys: Mapping[str, str]) -> None:
    def named(key: str) -> str:  # our key, and the file's own name for it when that differs
        return f"{key} [file: {file_keys[key]}]" if key in file_keys and file_keys[key] != key else key

    missing = [k for k in expected if k not in state]
    unexpected = [named(k) for k in state if k not in expected]
    wrong_shape = [f"{named(k)} (file {list(state[k].shape)}, model {list(expected[k].shape)})"
                   for k in expected if k in state and list(state[k].shape) != list(expected[k].shape)]
    problems = [f"{what}: {_first(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", wrong_shape)) if keys]
    if problems:
        raise ValueError(f"cannot load {path} into {type(model).__name__}; " + "; ".join(problems))


def _first(keys: list[str], shown: int = 12) -> str:
    more = f" ... ({len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
