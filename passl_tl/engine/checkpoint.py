"""Checkpoint files that survive crashes: written atomically with a SHA-256 beside them, verified
when read, found by name (``ckpt_eEEEE_iIIIIII.pdckpt``) for ``--resume auto``, which every process
takes from rank 0's choice."""
from __future__ import annotations

import errno
import glob
import math
import os
import re
from typing import Any

import numpy as np
import paddle

from ..utils.atomic import fsync_directory, write_file_atomic
from ..utils.checksum import file_sha256
from ..utils.dist import broadcast_text, is_main, rank, wait_for_all
from ..utils.logger import get_logger
from ..utils.paddle_file import RefusedGlobalError, load_paddle_file

CHECKSUM_SUFFIX = ".sha256"
# save_atomic's temporary files of the files a run writes (left by a killed process)
_TEMPORARY = re.compile(r"^(ckpt_e\d+_i\d+\.pdckpt(\.sha256)?|(best|best_model|best_ema|final|final_ema)\.pdparams)\.tmp\d+$")
_CHECKPOINT = re.compile(r"ckpt_e(\d+)_i(\d+)\.pdckpt$")
RESUME_CHOICE_KEY = "passl_tl/resume/choice"  # the TCP store keys of agreed_latest_checkpoint
RESUME_LOADED_KEY = "passl_tl/resume/loaded"


def checkpoint_name(epoch: int, iters_done: int) -> str:
    return f"ckpt_e{epoch:04d}_i{iters_done:06d}.pdckpt"


def list_checkpoints(directory: str) -> list[str]:
    """Training checkpoints of ``directory``, oldest first (by epoch and iteration in the name)."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(directory), "ckpt_e*_i*.pdckpt")):
        m = _CHECKPOINT.search(os.path.basename(path))
        if m:
            found.append(((int(m.group(1)), int(m.group(2))), path))
    return [p for _, p in sorted(found)]


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def save_atomic(obj: Any, path: str, checksum: bool = False) -> None:
    """``paddle.save`` ``obj`` to ``path`` so that a crash at any point leaves the previous file or the
    complete new one: a temporary file, fsync, rename, fsync of the directory. With ``checksum`` its
    SHA-256 then goes to ``path.sha256`` (an old one is removed first: a file is never paired with
    another's checksum, at worst it has none). Errors (unwritable directory, disk full) name the
    file; nothing earlier is touched."""
    directory = os.path.dirname(os.path.abspath(path))
    sidecar = path + CHECKSUM_SUFFIX
    try:
        os.makedirs(directory, exist_ok=True)
        if checksum and os.path.exists(sidecar):
            os.remove(sidecar)
        write_file_atomic(path, lambda tmp: paddle.save(obj, tmp), fsync=True)
        if checksum:
            write_file_atomic(sidecar, lambda tmp: _write_text(tmp, file_sha256(path) + "\n"), fsync=True)
        fsync_directory(directory)
    except OSError as e:
        full = " (disk full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise OSError(e.errno, f"could not write {path}{full}: {e}; earlier files are intact") from e


def verify_checksum(path: str) -> bool:
    """True if ``path.sha256`` exists and matches; False if there is none; raises ``ValueError`` on a mismatch."""
    sidecar = path + CHECKSUM_SUFFIX
    if not os.path.isfile(sidecar):
        return False
    with open(sidecar, encoding="utf-8") as f:
        expected = f.read().strip()
    if file_sha256(path) != expected:
        raise ValueError(f"checkpoint {path} is corrupt or truncated: its SHA-256 differs from {sidecar}")
    return True


def load_checkpoint(path: str) -> dict:
    """Read a training checkpoint written by :func:`save_atomic`, verified against its SHA-256 where
    one was written; every error names the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not verify_checksum(path):
        get_logger().warning(f"checkpoint {path} has no {os.path.basename(path)}{CHECKSUM_SUFFIX}: it is read "
                             f"unverified (only its values are checked)")
    try:
        state = load_paddle_file(path)  # restricted: a planted file must not run code
    except RefusedGlobalError as e:
        raise ValueError(f"checkpoint {path} is unreadable: {e}") from e
    except Exception as e:  # a damaged file
        raise ValueError(f"checkpoint {path} is unreadable (truncated or corrupt?): {e}") from e
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise ValueError(f"{path} is not a passl_tl training checkpoint (no 'model'/'epoch' entries)")
    bad = first_nonfinite(state)
    if bad:
        raise ValueError(f"checkpoint {path} is corrupt: {bad} holds non-finite values (a training run saves "
                         f"only finite states)")
    return state


def first_nonfinite(state: Any, prefix: str = "") -> str | None:
    """The key path of the first tensor, array or float in a (nested) state that is NaN or infinite, or None."""
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        if isinstance(state, paddle.Tensor):
            state = state.numpy()
        finite = (np.isfinite(state).all() if isinstance(state, np.ndarray) and state.dtype.kind in "fc"
                  else not isinstance(state, float) or math.isfinite(state))
        return None if finite else prefix or "the state"
    for key, value in items:
        found = first_nonfinite(value, f"{prefix}.{key}" if prefix else str(key))
        if found:
            return found
    return None


def load_latest_checkpoint(directory: str) -> tuple[str, dict] | None:
    """The newest checkpoint of ``directory`` that loads and verifies, and its state; each unusable newer
    one is reported as a warning naming it and the fallback. None if there is no usable checkpoint."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except (OSError, ValueError) as e:
            get_logger().warning(f"skipping checkpoint {path}: {e}; falling back to the previous one")
    return None


def agreed_latest_checkpoint(directory: str) -> tuple[str, dict] | None:
    """What ``--resume auto`` continues from, the same checkpoint in every process: rank 0 takes the newest usable
    one of ``directory`` (:func:`load_latest_checkpoint`) and sends its name; the others load that file of their
    ``directory``. Choosing for themselves, processes that see the directory differently (disks local to each node,
    a network file system's stale cache) would continue from different steps. None in every process when rank 0
    finds no checkpoint. Raises when rank 0 finds only unusable ones, or when another process cannot use the
    one chosen. Returns once every process holds its state."""
    found = None
    if is_main():
        found = load_latest_checkpoint(directory)
        if found is None and list_checkpoints(directory):
            raise ValueError(f"--resume auto: none of the checkpoints in {directory} can be read (see the warnings "
                             f"above); move them away to start from scratch")
    name = broadcast_text(RESUME_CHOICE_KEY, os.path.basename(found[0]) if found else "")
    if name and found is None:
        path = os.path.join(directory, name)
        try:
            found = path, load_checkpoint(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"--resume auto: rank 0 chose {name}, which rank {rank()} cannot use: {e}; every "
                             f"process must see the output_dir of rank 0 (a file system shared by all nodes)") from e
    wait_for_all(RESUME_LOADED_KEY)  # no collective waits for a slow load (gloo would give up after 30 s)
    return found


def remove_checkpoint(path: str) -> None:
    """Delete a checkpoint and its checksum file."""
    for name in (path, path + CHECKSUM_SUFFIX):
        if os.path.exists(name):
            os.remove(name)


def remove_temporaries(directory: str) -> list[str]:
    """Delete the temporary files a killed ``save_atomic`` left in ``directory``; returns their paths."""
    stale = [os.path.join(directory, name) for name in sorted(os.listdir(directory)) if _TEMPORARY.search(name)]
    for path in stale:
        os.remove(path)
    return stale


def check_writable(directory: str) -> None:
    """Create ``directory`` if needed and prove a file can be written there, before any heavy work."""
    probe = os.path.join(directory, f".write_test{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OSError(e.errno, f"output_dir {directory} is not writable: {e}") from e


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
