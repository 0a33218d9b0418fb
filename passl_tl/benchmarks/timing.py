"""What every benchmark shares: repeated timing with warm-up, summaries, the machine, plain tables."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Sequence

import numpy as np
import paddle


def repeat_timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median and spread (min, max) of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def rates(seconds: Sequence[float], items: int) -> dict[str, float]:
    """``summary`` of items per second, one value per timed repeat."""
    return summary([items / s for s in seconds])


def milliseconds(seconds: Sequence[float]) -> dict[str, float]:
    return summary([1000.0 * s for s in seconds])


def machine() -> dict[str, object]:
    """The CPU (``lscpu`` model name, or the platform's), its count, load and library versions."""
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    return {"cpu": model, "cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "system": platform.platform(), "python": platform.python_version(), "paddle": paddle.__version__,
            "numpy": np.__version__}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table of ``rows`` (floats shown with 3 significant digits, at least as integers)."""
    cells = [[format_number(v) if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths]] + cells
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines)


def verdict(met: bool, judged: bool) -> str:
    """A check's ``met`` cell: ``yes`` or ``NO``, or ``-`` where the run cannot tell (a ``--quick`` smoke test)."""
    return ("yes" if met else "NO") if judged else "-"


def format_number(value: float) -> str:
    """3 significant digits, but never fewer than the integer digits."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
