"""Process-group helpers that also work in a plain single-process run, and failure reports between ranks."""
from __future__ import annotations

import atexit
import ctypes
import math
import mmap
import os
import signal
import socket
import sys
import threading
import time
import traceback
from types import TracebackType

import paddle
import paddle.distributed as dist

FAILURES_KEY = "passl_tl/failures"  # how many ranks reported a failure
STOP_KEY = "passl_tl/stop/{}"  # rank r's watch thread waits for it: the first report, or b"" at a normal exit
ACKS_KEY = "passl_tl/failure_acks"  # how many ranks logged a report and stopped
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LAUNCHED_ENV = "PADDLE_TRAINER_ID"  # set by paddle.distributed.launch in every process it starts
STORE_CONNECT_TIMEOUT_S = 30  # a TCP store client's connection (not its waits for a key)


def world_size() -> int:
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def rank() -> int:
    return int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def is_main() -> bool:
    return rank() == 0


_reporter: "FailureReporter | None" = None


def init_distributed(grace: float = 10.0) -> None:
    """Join the process group when launched by ``paddle.distributed.launch`` with >1 process, and make
    every rank stop, naming the failed rank and why, when one fails (:class:`FailureReporter`). A launched
    process gets SIGTERM when the launcher dies (it would otherwise train on, unwatched): the trainer then
    stops at the next step boundary with a checkpoint."""
    global _reporter
    if LAUNCHED_ENV in os.environ:
        watch_launcher()
    if world_size() > 1 and not dist.is_initialized():
        dist.init_parallel_env()
        _reporter = FailureReporter(grace)
        _reporter.start()


def watch_launcher() -> None:
    """SIGTERM to this process when its parent, the launcher, dies (Linux only). (A parent already gone cannot be
    told from a launcher that is PID 1 of a container, so the check starts here.)"""
    set_parent_death_signal(signal.SIGTERM)


def end_without_report() -> None:
    """This process ends on purpose (e.g. stopped by a signal with its state saved): its exit is not reported
    to the other processes as a failure."""
    if _reporter is not None:
        _reporter.end()


def report_failure(error: BaseException) -> None:
    """Tell the other ranks why this one stops (a tool that handles ``error`` itself, e.g. exiting with a
    one-line message, calls this; an unhandled error is reported by the excepthook). No-op in one process."""
    if _reporter is not None:
        _reporter.report(f"failed: {describe(error)}{_reporter.thread_error}")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few Python numbers over all processes (float64 so counts stay exact)."""
    if world_size() == 1:
        return list(values)
    t = paddle.to_tensor(values, dtype="float64")
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def _store_client() -> "paddle.base.core.TCPStore":
    host, port = store_endpoint()
    return paddle.base.core.TCPStore(host, port, False, world_size(), STORE_CONNECT_TIMEOUT_S)


def broadcast_text(key: str, text: str) -> str:
    """Rank 0's ``text`` on every process (the others' is ignored). It goes through the process group's TCP store,
    where the others wait as long as rank 0 takes (a gloo collective gives up after 30 s); a failing process stops
    the waiting ones (:class:`FailureReporter`). Each ``key`` is used once per run."""
    if world_size() == 1:
        return text
    store = _store_client()
    if is_main():
        store.set(key, text.encode())
        return text
    return store.get(key).decode()


def wait_for_all(key: str) -> None:
    """Return once every process has called this with ``key`` (once per run): a barrier in the TCP store, which,
    unlike gloo's, waits as long as the slowest process takes."""
    if world_size() == 1:
        return
    store = _store_client()
    if store.add(f"{key}/arrived", 1) == world_size():
        store.set(f"{key}/all", b"1")
    store.get(f"{key}/all")


def broadcast_buffers(layer: paddle.nn.Layer) -> None:
    """Copy rank 0's buffers (BatchNorm running stats) to every process, as torch DDP does."""
    if world_size() == 1:
        return
    for buffer in layer.buffers():
        dist.broadcast(buffer, src=0)


def set_parent_death_signal(sig: int) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux only; False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, sig)
    return True


def exit_status(pid: int) -> int | None:
    """The wait status of process ``pid`` if it has exited and is not yet reaped (a zombie; Linux >= 3.5)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # from field 3 (state) on; the name may hold ")"
    except OSError:
        return None
    return int(fields[49]) if fields[0] == "Z" else None


def death_cause(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def describe(error: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(error), error)).strip()


def store_endpoint() -> tuple[str, int]:
    """Host and port of the process group's TCP store, found as ``init_parallel_env`` finds them."""
    if os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
        return os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    endpoint = os.environ.get("PADDLE_MASTER") or os.environ["PADDLE_TRAINER_ENDPOINTS"].split(",")[0]
    host, port = endpoint.rsplit(":", 1)
    return host, int(port)


class FailureReporter:
    """When one rank fails, every rank stops within seconds, each logging which rank failed and why.

    A failure is published in the process group's TCP store, through clients of this reporter's own
    (Paddle's store client takes no lock): ``rank R (pid, host) failed: <error>`` when the main thread of
    rank R raises (with the error a thread raised before it, e.g. a DataLoader reader passing on its
    worker's), and ``rank R (pid, host) was killed by signal 9 (SIGKILL)`` or ``... exited with code C``
    when it ends otherwise: a child process forked here waits for the rank's death and reads its exit
    status. A thread in every rank waits in the store for the first report, logs it and ends its process
    with exit code 1 (the backends would wait for their timeouts: gloo 30 s, NCCL 30 minutes).

    Until every other rank has logged the report, or ``grace`` seconds passed, the failed rank's sockets stay
    open (the rank waits, or its child holds them): gloo aborts a rank whose peer disconnected mid-collective,
    which would kill the others before they log anything, and ``paddle.distributed.launch`` names only the
    lowest rank that it finds dead.
    """

    def __init__(self, grace: float):
        self.store = _store_client()  # to report (or for the child)
        self.watch_store = _store_client()  # for the watch thread
        self.grace = grace
        self.identity = f"rank {rank()} (pid {os.getpid()}, host {socket.gethostname()})"
        self.ended = mmap.mmap(-1, 1)  # shared with the child: 1 once this rank reported or stopped on a report
        self.lock = threading.Lock()
        self.thread_error = ""
        self._excepthook, self._threading_excepthook = sys.excepthook, threading.excepthook
        self.thread = threading.Thread(target=self.watch, name="passl_tl-failure-watch", daemon=True)

    def start(self) -> None:
        if sys.platform.startswith("linux"):
            sys.stdout.flush()
            sys.stderr.flush()
            parent = os.getpid()
            if os.fork() == 0:
                self.watch_parent(parent)
        sys.excepthook, threading.excepthook = self.on_exception, self.on_thread_exception
        self.thread.start()
        atexit.register(self.stop_watching)

    def on_exception(self, kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # Paddle's DataLoader handler raises at each dead worker
        self._excepthook(kind, error, tb)
        if isinstance(error, Exception):
            self.report(f"failed: {describe(error)}{self.thread_error}")

    def on_thread_exception(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:  # recorded before printing, which lets the main thread run
            name = args.thread.name if args.thread else "?"
            self.thread_error = f"\n  after thread {name} raised: {describe(args.exc_value)}"
        self._threading_excepthook(args)

    def end(self) -> bool:
        """Mark this rank's end as explained; False if it already was."""
        with self.lock:
            first, self.ended[0] = not self.ended[0], 1
        return first

    def report(self, what: str, publish: bool = True) -> None:
        """Log ``<this rank> <what>`` and publish it; wait (at most ``grace`` s) until every other rank logged it."""
        if not self.end():
            return
        message = f"{self.identity} {what}"
        _log_error(message)
        if not publish:
            return
        failed = self.store.add(FAILURES_KEY, 1)
        if failed == 1:  # the first failure stops the others
            for other in set(range(world_size())) - {rank()}:
                self.store.set(STOP_KEY.format(other), message.encode())
        deadline = time.monotonic() + self.grace  # passes when the others cannot run Python
        while self.store.add(ACKS_KEY, 0) < world_size() - failed and time.monotonic() < deadline:
            time.sleep(0.05)

    def watch(self) -> None:
        """Thread: on the first report of another rank, log it and end this process."""
        try:
            message = self.watch_store.get(STOP_KEY.format(rank())).decode()  # waits until it exists
        except Exception:  # the store's host, rank 0, has exited: nothing more can be reported
            return
        if message and self.end():
            _log_error(f"stopping: {message}")
            self.watch_store.add(ACKS_KEY, 1)
            os._exit(1)

    def stop_watching(self) -> None:
        """At exit: wake and join the watch thread, which must not be in a C++ call when the interpreter ends
        (Python ends such a daemon thread with pthread_exit, and C++ terminates the process)."""
        try:
            self.store.set(STOP_KEY.format(rank()), b"")
        except Exception:  # the store's host, rank 0, has exited: the thread's wait failed too
            pass
        self.thread.join(timeout=self.grace)

    def watch_parent(self, parent: int) -> None:
        """In the forked child: wait for the rank to die; report an unexplained abnormal end. Never returns."""
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and the launcher's stop are for the rank
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
            set_parent_death_signal(signal.SIGUSR1)
            if os.getppid() == parent:
                signal.sigwait({signal.SIGUSR1})
            status = exit_status(parent)
            if status and not self.ended[0] and not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGINT):
                signal.alarm(math.ceil(self.grace) + 1)
                if rank() == 0:  # the store died with it
                    self.report(death_cause(status), publish=False)
                elif not self.store.add(FAILURES_KEY, 0):  # not stopped by the launcher after another failure
                    self.report(death_cause(status))
        finally:
            os._exit(0)


def _log_error(message: str) -> None:
    from .logger import get_logger  # logger imports this module
    logger = get_logger()
    logger.error(message)
    for handler in logger.handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
