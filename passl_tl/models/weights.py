"""Load our ``.pdparams`` or an official PyTorch checkpoint into a model, strictly."""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import paddle
import paddle.nn as nn

from ..utils.registry import ConfigError
from ..utils.torch_checkpoint import load_torch_file

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt")
# Where a training checkpoint keeps the weights, in order of preference.
CHECKPOINT_KEYS = ("model", "state_dict", "state_dict_ema")
# Official top-level head names -> ours (inside the Classifier); everything else is backbone.
HEAD_NAMES = {"head": "head.cls_head", "aux_head": "head.aux_head"}
BN_BUFFERS = {"running_mean": "_mean", "running_var": "_variance"}


def load_weights(model: nn.Layer, path: str) -> str:
    """Load ``path`` into ``model``: every key must match by name and shape; returns a short report."""
    if path.endswith(".pdparams"):
        state, layout = dict(paddle.load(path)), "paddle state dict"
    elif path.endswith(TORCH_SUFFIXES):
        state, layout = select_state_dict(load_torch_file(path), path)
        state = convert_official(state, model)
    else:
        raise ConfigError(f"unknown weights format {path}: expected .pdparams or {', '.join(TORCH_SUFFIXES)}")
    set_state_strict(model, state, path)
    return f"loaded {len(state)} tensors from {os.path.basename(path)} ({layout})"


def set_state_strict(model: nn.Layer, state: Mapping[str, Any], path: str) -> None:
    """``model.set_state_dict(state)`` that fails, naming ``path`` and the keys, unless every key
    matches by name and shape; values are cast to the model's dtypes."""
    expected = model.state_dict()
    _check_compatible(model, expected, state, path)
    model.set_state_dict({k: _to_dtype(v, expected[k].dtype) for k, v in state.items()})


def select_state_dict(checkpoint: Any, path: str) -> tuple[dict[str, np.ndarray], str]:
    """The state dict inside an official checkpoint: plain, or under one of ``CHECKPOINT_KEYS``."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(checkpoint).__name__}")
    if all(isinstance(v, np.ndarray) for v in checkpoint.values()):
        return dict(checkpoint), "plain torch state dict"
    for key in CHECKPOINT_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            return dict(checkpoint[key]), f"torch checkpoint['{key}']"
    raise ValueError(f"{path}: no state dict found; top-level keys: {', '.join(map(str, checkpoint))} "
                     f"(expected tensors or one of {', '.join(CHECKPOINT_KEYS)})")


def convert_official(state: Mapping[str, np.ndarray], model: nn.Layer) -> dict[str, np.ndarray]:
    """Official (PyTorch) names and layouts -> ours.

    ``head``/``aux_head`` go to the Classifier's head, the rest to its backbone; Linear weights are
    transposed; BatchNorm running stats are renamed; ``num_batches_tracked`` is dropped.
    A DataParallel ``module.`` prefix is removed.
    """
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    linear_weights = {f"{name}.weight" for name, layer in model.named_sublayers() if isinstance(layer, nn.Linear)}
    converted = {}
    for key, value in state.items():
        if key.endswith(".num_batches_tracked"):
            continue
        top, _, rest = key.partition(".")
        owner, _, leaf = (f"{HEAD_NAMES[top]}.{rest}" if top in HEAD_NAMES else f"backbone.{key}").rpartition(".")
        name = f"{owner}.{BN_BUFFERS.get(leaf, leaf)}"
        converted[name] = value.T if name in linear_weights else value
    return converted


def _to_dtype(value: Any, dtype: paddle.dtype) -> paddle.Tensor:
    """``value`` as a tensor of the model's dtype (e.g. half-precision checkpoints into float32)."""
    tensor = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(value)
    return tensor if tensor.dtype == dtype else tensor.astype(dtype)


def _check_compatible(model: nn.Layer, expected: Mapping[str, Any], state: Mapping[str, Any], path: str) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} (file {list(state[k].shape)}, model {list(expected[k].shape)})"
                   for k in expected if k in state and list(state[k].shape) != list(expected[k].shape)]
    problems = [f"{what}: {_first(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", wrong_shape)) if keys]
    if problems:
        raise ValueError(f"cannot load {path} into {type(model).__name__}; " + "; ".join(problems))


def _first(keys: list[str], shown: int = 12) -> str:
    more = f" ... ({len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
