"""Freed memory kept in the process on the CPU, so the next tensor of the same size does not page-fault it in.

Paddle's CPU tensors come from glibc's malloc, which serves a block above its mmap threshold (128 KB, growing
to 32 MB) with a fresh ``mmap`` and unmaps it on free: every such tensor then costs the kernel's page faults
and zero-filling on first touch. On a CPU training step that is most of the time of the elementwise ops (a
ReLU of a ``[16, 64, 112, 112]`` map: 37 ms, 7 ms with the memory kept; LV-ViT-T's step 2.56 -> 3.02 img/s,
see the README). Serving every block from the heap (``M_MMAP_MAX`` 0) and returning its free top only above
2 GB (``M_TRIM_THRESHOLD``) keeps the memory for reuse; the peak stays what the step needs (fragmentation
aside: 1946 -> 2121 MB for LV-ViT-T, batch 16).

A ``MALLOC_*_`` variable or a ``glibc.malloc`` tunable in the environment is the user's own setting and is kept.
"""
from __future__ import annotations

import ctypes
import os
import platform
from typing import Mapping

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2 ** 31 - 1  # bytes of free heap top kept before returning it (mallopt takes an int)


def user_malloc_settings(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The environment's own malloc settings: ``MALLOC_*_`` variables and ``glibc.malloc`` tunables."""
    found = [name for name in environ if name.startswith("MALLOC_") and name.endswith("_")]
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        found.append("GLIBC_TUNABLES")
    return found


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Serve every allocation of this process from glibc's heap and keep what is freed (see the module); False,
    changing nothing, without glibc or where the environment sets malloc itself."""
    if platform.libc_ver()[0] != "glibc" or user_malloc_settings(environ):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
