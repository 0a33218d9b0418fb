"""Progress of long work: done/total, rate and time left, either redrawn on one stderr line (``Progress``, for a
tool at a terminal) or logged every so often (``ProgressLog``, for work that writes log files or runs under a
launcher, where a redrawn line does not fit)."""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

LOG_INTERVAL_S = 30.0  # ProgressLog: seconds between lines (work that ends sooner logs none)


def format_duration(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_text(done: int, total: int, elapsed: float) -> str:
    """``done/total (percent)  rate/s  elapsed H:MM:SS  ETA H:MM:SS``; the ETA is ``?`` until a rate is known."""
    rate = done / elapsed if elapsed > 0 else 0.0
    left = format_duration((total - done) / rate) if rate > 0 else "?"
    percent = 100.0 * done / total if total else 100.0
    return f"{done}/{total} ({percent:.1f}%)  {rate:.1f}/s  elapsed {format_duration(elapsed)}  ETA {left}"


class Progress:
    """Call ``update()`` after each item; leaving the ``with`` block draws the final line and ends it."""

    def __init__(self, total: int, what: str, stream: TextIO | None = None, interval: float = 0.5):
        self.total, self.what, self.interval = total, what, interval
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = self.last_draw = time.monotonic()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last_draw >= self.interval:
            self.last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        self.stream.write(f"\r{self.what}: {progress_text(self.done, self.total, now - self.start)}  ")
        self.stream.flush()


class ProgressLog:
    """Call ``update(n)`` as work gets done: once ``interval`` seconds have passed since the start or the last
    line, ``log`` gets ``what: <progress_text>``. ``done`` is capped at ``total`` (a count estimated from one
    process of several may overshoot); the caller reports the end."""

    def __init__(self, total: int, what: str, log: Callable[[str], None], interval: float = LOG_INTERVAL_S):
        self.total, self.what, self.log, self.interval = total, what, log, interval
        self.done = 0
        self.start = self.last_line = time.monotonic()

    def update(self, n: int) -> None:
        self.done = min(self.total, self.done + n)
        now = time.monotonic()
        if now - self.last_line >= self.interval and self.done < self.total:
            self.last_line = now
            self.log(f"{self.what}: {progress_text(self.done, self.total, now - self.start)}")
