"""Graceful stop on SIGTERM / SIGINT: schedulers (Slurm, Kubernetes, PaddleCloud) send SIGTERM and wait before
SIGKILL, so the run finishes its step, writes a checkpoint there and ends with ``utils.errors.Preempted``."""
from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import Callable

from ..utils.logger import get_logger

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# paddle.distributed.launch passes its SIGTERM on to each rank up to 3 times, 0.2 s apart: one request
REPEAT_WINDOW_S = 1.0


class StopSignals:
    """While active (a context manager, main thread only), the first SIGTERM or SIGINT only sets
    :attr:`requested`; the trainer stops at the next step boundary. A second signal (another one, or the same
    one more than :data:`REPEAT_WINDOW_S` later) ends the process at once with 128 + its number."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal is None:
            self.signal, self._first_at = signum, time.monotonic()
            log_outside_handler(get_logger().warning, f"received {name}: finishing the current step, then saving "
                                                      f"a checkpoint and stopping (a second signal stops at once)")
        elif signum != self.signal or time.monotonic() - self._first_at > REPEAT_WINDOW_S:
            log_outside_handler(get_logger().error, f"received {name} again: stopping at once, without a checkpoint",
                                wait_s=1.0)
            os._exit(128 + signum)


def log_outside_handler(log: Callable[[str], None], message: str, wait_s: float = 0.0) -> None:
    """``log(message)`` from another thread. A signal handler runs between two bytecodes of the main thread, which
    may be inside a log call writing the same buffered file: logging from the handler fails there ("reentrant
    call"), while another thread waits for the main thread to finish its write. ``wait_s``: wait up to that long
    for it (the process is about to end)."""
    thread = threading.Thread(target=log, args=(message,), name="passl_tl-signal-log", daemon=True)
    thread.start()
    if wait_s:
        thread.join(wait_s)
