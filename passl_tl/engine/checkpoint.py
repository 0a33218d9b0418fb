"""Atomic checkpoint files: a crash mid-write never leaves a truncated file under the real name."""
from __future__ import annotations

import os
from typing import Any

import paddle


def save_atomic(obj: Any, path: str) -> None:
    """``paddle.save`` to a temporary file in the same directory, fsync, then rename over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        paddle.save(obj, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(f"could not write checkpoint {path}: {e}") from e
    finally:
        if os.path.exists(tmp):  # only left over when writing failed or was interrupted
            os.remove(tmp)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str) -> dict:
    """Read a training checkpoint written by :func:`save_atomic`; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = paddle.load(path)
    except Exception as e:  # paddle raises several kinds for a damaged file
        raise ValueError(f"checkpoint {path} is unreadable (truncated or corrupt?): {e}") from e
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise ValueError(f"{path} is not a passl_tl training checkpoint (no 'model'/'epoch' entries)")
    return state


def _rename_keys(state: dict, renames: dict[str, str]) -> dict:
    """Replace the longest matching name prefix of every key (recursing into sub-dicts)."""
    ordered = sorted(renames, key=len, reverse=True)
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            value = _rename_keys(value, renames)
        old = next((p for p in ordered if key == p or key.startswith(p + "_")), None)
        out[renames[old] + key[len(old):] if old is not None else key] = value
    return out


def portable_optimizer_state(optimizer_state: dict, model: paddle.nn.Layer) -> dict:
    """Optimizer state keyed by structured parameter names (``backbone.blocks.0.attn.qkv.weight``)
    instead of Paddle's per-process generated names, so another process can load it."""
    return _rename_keys(optimizer_state, {p.name: n for n, p in model.named_parameters()})


def restore_optimizer_state(saved: dict, model: paddle.nn.Layer) -> dict:
    """Inverse of :func:`portable_optimizer_state` for the parameters of this process's model."""
    return _rename_keys(saved, {n: p.name for n, p in model.named_parameters()})
