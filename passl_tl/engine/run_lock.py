"""One training run per output directory: two runs writing one ``output_dir`` would interleave their logs and
checkpoints, so the first takes a lock file naming itself and a second stops, naming it; and a new run does not
write into a directory that holds another run, finished or not (:func:`check_new_run`)."""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from typing import Any

from .checkpoint import check_writable, list_checkpoints, load_checkpoint, load_latest_checkpoint
from .hooks.checkpoint import best_files

LOCK_NAME = ".passl_tl.lock"
RECORD = "config.yaml"  # tools/train.py writes it when training starts
FINAL = "final.pdparams"
RUN_FILES = (RECORD, FINAL, "final_ema.pdparams", *best_files(has_ema=True))
SHOWN_FILES = 4


def run_files(directory: str) -> list[str]:
    """The files of ``directory`` that show a training run started there: its config record, its weights and its
    checkpoints (a log alone is left by a run that stopped before training)."""
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(directory, name))]
    return found + [os.path.basename(path) for path in list_checkpoints(directory)]


def in_directory(path: str, directory: str) -> bool:
    """Whether the file ``path`` lies in ``directory`` itself (links resolved): a checkpoint of that run."""
    return os.path.realpath(os.path.dirname(os.path.abspath(path))) == os.path.realpath(directory)


def check_new_run(directory: str, resume: str | None) -> None:
    """Unless ``resume`` continues the run of ``directory`` (``"auto"`` or one of its checkpoints), a directory
    holding a run (:func:`run_files`) is an error (``FileExistsError``) naming it, what it holds and the ways out:
    a new run would append to its log, mix checkpoints and replace its best and final weights."""
    found = run_files(directory)
    if not found or resume == "auto" or (resume is not None and in_directory(resume, directory)):
        return
    held = ", ".join(found[:SHOWN_FILES]) + (f" and {len(found) - SHOWN_FILES} more" if len(found) > SHOWN_FILES
                                             else "")
    if resume is not None:
        raise FileExistsError(f"--resume {resume} would continue that checkpoint's run in output_dir {directory}, "
                              f"which holds another run ({held}): resume into a new or empty output_dir "
                              f"(-o output_dir=...), or continue the run of {directory} with --resume auto")
    raise FileExistsError(f"output_dir {directory} already holds a run ({held}); a new run would mix its log, "
                          f"checkpoints and weights with it. Continue that run with --resume auto, or start the new "
                          f"one in another directory (-o output_dir=...)")


def finished_checkpoint(directory: str, resume: str, total_epochs: int) -> str | None:
    """The checkpoint ``--resume`` (``"auto"`` or a file) would continue the run of ``directory`` from, when that
    run has finished: it wrote ``final.pdparams`` and the checkpoint ends its last epoch of ``total_epochs``.
    None when there is training left (or the checkpoint is of another directory)."""
    if not os.path.isfile(os.path.join(directory, FINAL)):
        return None
    if resume == "auto":
        found = load_latest_checkpoint(directory)
    else:
        found = (resume, load_checkpoint(resume)) if in_directory(resume, directory) else None
    if found is None:
        return None
    path, state = found
    return path if state["epoch"] + 1 >= total_epochs and state["iters_done"] >= state["iters_per_epoch"] else None


def missing_directories(path: str) -> list[str]:
    """The directories ``os.makedirs(path)`` would create, innermost first."""
    missing, path = [], os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


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
    """``with OutputDirLock(directory):`` creates ``directory`` if needed (an error if it cannot be written) and holds
    ``directory/.passl_tl.lock`` for this process. A lock of a running process is an error naming it; one left by
    a process that is gone (same host) is taken over, and :attr:`took_over` describes the run that left it.
    Leaving, it removes the directories it created (:attr:`created`) if they are empty: a run that stopped before
    writing anything leaves none behind."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "start_ticks": process_start_ticks(os.getpid()),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": [sys.executable, *sys.argv]}
        self.took_over: str | None = None
        self.created: list[str] = []

    def __enter__(self) -> "OutputDirLock":
        self.created = missing_directories(self.directory)
        try:
            check_writable(self.directory)
            return self._take()
        except BaseException:
            self._remove_created()
            raise

    def __exit__(self, *exc_info: object) -> None:
        if self._read() == self.record:  # never remove a lock another run took over
            os.remove(self.path)
        self._remove_created()

    def _remove_created(self) -> None:
        for directory in self.created:  # innermost first; one holding anything stays, and so do its parents
            try:
                os.rmdir(directory)
            except OSError:
                return

    def _take(self) -> "OutputDirLock":
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

    def _read(self) -> dict[str, Any] | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half-written by a process killed while taking it
        return record if isinstance(record, dict) else {}
