"""A one-line progress counter on stderr: done/total, rate and time left, redrawn every ``interval`` s."""
from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


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
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = format_duration((self.total - self.done) / rate) if rate > 0 else "?"
        percent = 100.0 * self.done / self.total if self.total else 100.0
        self.stream.write(f"\r{self.what}: {self.done}/{self.total} ({percent:.1f}%)  {rate:.1f}/s  "
                          f"elapsed {format_duration(elapsed)}  ETA {left}  ")
        self.stream.flush()
