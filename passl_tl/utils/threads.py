"""CPU thread count of Paddle's kernels (GEMM, im2col conv, elementwise with OpenMP).

Paddle 3.3's CPU build uses one thread unless told otherwise (``OMP_NUM_THREADS`` unset); the
dygraph kernels are its native/MKL ones (``FLAGS_use_mkldnn`` does not route dygraph ops to
oneDNN), so this count is the main CPU speed knob.
"""
from __future__ import annotations

import os

import paddle

_threads_set = 1  # Paddle's own default



def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_cpu_threads(threads: int = 0) -> int:
    """Use ``threads`` CPU threads in Paddle's kernels (0: every available CPU); returns the count set."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ValueError(f"threads must be an integer >= 0 (0: all available CPUs), got {threads!r}")
    global _threads_set
    count = threads or available_cpus()
    paddle.base.core.set_num_threads(count)
    _threads_set = count
    return count


def cpu_threads() -> int:
    """The CPU thread count last set by ``set_cpu_threads`` (Paddle's default 1 before that)."""
    return _threads_set
