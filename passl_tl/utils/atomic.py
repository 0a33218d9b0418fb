"""Atomic writes: a file or directory is built under a temporary name beside its target, then renamed
onto it in one step, so readers (and a crash) see the old target or the complete new one, never a
half-written one. The temporary is removed when building or renaming fails."""
from __future__ import annotations

import os
import shutil
from typing import Callable, TypeVar

T = TypeVar("T")


def temporary_name(path: str) -> str:
    """``<path>.tmp<pid>``: beside ``path`` (the rename stays on one file system) and private to this process."""
    return f"{path}.tmp{os.getpid()}"


def fsync_directory(directory: str) -> None:
    """Make the renames in ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_file_atomic(path: str, write: Callable[[str], object], fsync: bool = False) -> None:
    """``write(tmp)``, with ``fsync`` flush the temporary to disk, then replace ``path`` with it."""
    tmp = temporary_name(path)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # only left over when writing failed
            os.remove(tmp)


def write_directory_atomic(path: str, fill: Callable[[str], T], keep_existing: bool = False) -> T | None:
    """``fill(tmp)`` builds the directory at ``tmp``, which is then renamed to ``path``; returns what
    ``fill`` returned.

    The rename fails when ``path`` exists by then (non-empty). With ``keep_existing`` that is a lost race:
    another process wrote ``path`` first, ours is discarded and None returned instead of raising.
    """
    tmp = temporary_name(os.path.normpath(path))
    try:
        result = fill(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            if not keep_existing:
                raise
            return None
        return result
    finally:
        if os.path.exists(tmp):  # only left over when filling or renaming failed
            shutil.rmtree(tmp)
