"""Paddle's CPU GEMMs and im2col convolutions run on the MKL it bundles (2019.5). On a CPU that is not Intel's
that MKL takes its generic SSE code path unless ``MKL_DEBUG_CPU_TYPE=5`` selects the AVX2 one: on the AMD EPYC
(Zen 3) of the README's measurements, 26 -> 70 GFLOP/s for a transformer block's GEMMs and 24 -> 36 for a stem
convolution. MKL reads the variable at its first call, not at load, so setting it on ``import passl_tl`` (the
tools import it before Paddle) takes effect. MKL 2020.1 and newer ignore it; Paddle's oneDNN paths never read it.

A variable already in the environment, even empty, is the user's choice and is kept (``MKL_DEBUG_CPU_TYPE=``
keeps MKL's own choice)."""
from __future__ import annotations

import os
from typing import MutableMapping

VARIABLE = "MKL_DEBUG_CPU_TYPE"
AVX2_CODE_PATH = "5"
REQUIRED_FLAGS = frozenset({"avx2", "fma"})  # what MKL's AVX2 kernels execute
CPUINFO = "/proc/cpuinfo"


def cpu_vendor_and_flags(cpuinfo: str = CPUINFO) -> tuple[str | None, frozenset[str]]:
    """The first CPU's ``vendor_id`` and ``flags`` (None and no flags where the file is missing: not Linux)."""
    vendor, flags = None, frozenset()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and vendor is None:
                    vendor = value.strip()
                elif key == "flags":
                    flags = frozenset(value.split())
                    break
    except OSError:
        pass
    return vendor, flags


def select_mkl_code_path(environ: MutableMapping[str, str] = os.environ, cpuinfo: str = CPUINFO) -> str | None:
    """Set ``MKL_DEBUG_CPU_TYPE=5`` in ``environ`` on an AMD CPU with AVX2 and FMA unless the variable is already
    there; the value set, or None when nothing was set."""
    if VARIABLE in environ:
        return None
    vendor, flags = cpu_vendor_and_flags(cpuinfo)
    if vendor != "AuthenticAMD" or not REQUIRED_FLAGS <= flags:
        return None
    environ[VARIABLE] = AVX2_CODE_PATH
    return AVX2_CODE_PATH
