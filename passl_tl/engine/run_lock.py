"""One training run per output directory: two runs writing one ``output_dir`` would interleave their logs and
checkpoints, so the first takes a lock file naming itself and a second stops, naming it."""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from typing import Any

LOCK_NAME = ".passl_tl.lock"


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), to tell it from a later process given
    the same pid; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _runs(record: dict[str, Any]) -> bool:
    """Whether the process of a lock record still runs; a record of another host counts as running."""
    if record.get("host") != socket.gethostname():
        return True
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    ticks = process_start_ticks(pid)
    return ticks is None or record.get("start_ticks") in (None, ticks)


def _describe(record: dict[str, Any]) -> str:
    return (f"pid {record.get('pid')} on host {record.get('host')}, started {record.get('started')}: "
            f"{' '.join(map(str, record.get('command') or []))}")


class OutputDirLock:
    """``with OutputDirLock(directory):`` holds ``directory/.passl_tl.lock`` for this process. A lock of a
    running process is an error naming it; one left by a process that is gone (same host) is taken over, and
    :attr:`took_over` describes the run that left it."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, LOCK_NAME)
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "start_ticks": process_start_ticks(os.getpid()),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": [sys.executable, *sys.argv]}
        self.took_over: str | None = None

    def __enter__(self) -> "OutputDirLock":
        for _ in range(3):  # another run may take over a stale lock at the same moment
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder == {}:  # being written this moment, or half-written by a killed run
                    time.sleep(1.0)
                    if self._read() != {}:
                        continue
                elif holder is not None and _runs(holder):
                    raise OSError(errno.EBUSY, f"output_dir {os.path.dirname(self.path)} is in use by another run "
                                               f"({_describe(holder)}); wait for it to end, or use another "
                                               f"output_dir. If that run is gone, delete {self.path}")
                if holder is not None and self._read() == holder:  # still the same stale record: take it over
                    self.took_over = _describe(holder) if holder else "an unreadable lock file"
                    os.remove(self.path)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.record, f)
                f.flush()
                os.fsync(f.fileno())
            return self
        raise OSError(errno.EBUSY, f"could not take the lock {self.path}: other runs keep replacing it")

    def __exit__(self, *exc_info: object) -> None:
        if self._read() == self.record:  # never remove a lock another run took over
            os.remove(self.path)

    def _read(self) -> dict[str, Any] | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half-written by a process killed while taking it
        return record if isinstance(record, dict) else {}
