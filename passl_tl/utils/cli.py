"""What the command-line tools share: config arguments and error reporting."""
from __future__ import annotations

import argparse
import atexit
import faulthandler
import pickle
import re
import signal
import sys
import zipfile
from typing import Any, Callable, NoReturn

from .dist import end_without_report, report_failure
from .errors import PREEMPTED_EXIT_CODE, MissingExtra, Preempted, TrainingStopped
from .registry import ConfigError

# Errors that mean bad input (a config, a path, a file's content) or a missing optional package: reported in one
# line. Other ImportErrors keep their traceback: they are bugs.
INPUT_ERRORS = (ConfigError, ValueError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, MissingExtra)
EXIT_GRACE_S = 20.0  # the longest the interpreter's shutdown may take once a tool's main() has ended
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what a shell shows for a program ended by Ctrl-C
# Paddle turns an exception raised in a PyLayer's backward into an OSError quoting it, KeyboardInterrupt included
_WRAPPED_INTERRUPT = re.compile(r"^\s*KeyboardInterrupt\b", re.M)


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True,
                         config_help: str = "YAML config file") -> None:
    """``-c CONFIG`` and ``-o key.sub=value ...`` overrides."""
    parser.add_argument("-c", "--config", required=required, help=config_help)
    parser.add_argument("-o", "--override", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config values with type checking, e.g. -o optimizer.lr=1e-3 "
                             "data.batch_size=64")


def run_tool(main: Callable[[], Any]) -> None:
    """Run a tool's ``main()``: bad input ends with ``error: ...`` on stderr and exit code 2, a run
    that had to stop (``TrainingStopped``) with exit code 1, a run stopped by a signal after saving its state
    (``Preempted``) with 75, a Ctrl-C the tool did not handle with ``interrupted`` and 130, all without a traceback;
    an integer result is the exit code. However it ends, the process then ends within ``EXIT_GRACE_S`` seconds
    (``bound_exit``)."""
    try:
        _run(main)
    finally:
        bound_exit()
        # The work is over: a Ctrl-C while the interpreter exits, after Python restored the signal's default action,
        # would end the process by the signal (exit code -2), hiding how the work ended.
        atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)


def bound_exit(grace: float = EXIT_GRACE_S) -> None:
    """A final guard: should the interpreter's shutdown (from its first atexit handler on: this registers the
    last, which runs first) last over ``grace`` seconds, ``faulthandler`` prints every thread's stack on stderr and
    ends the process with exit code 1.

    Nothing is known to block there any more: loaders left unfinished are shut down before (``engine.data``:
    Paddle's DataLoader shutdown in ``__del__`` during finalization could wait forever for a thread that can no
    longer start). The guard is for what is not known yet: the watchdog is a C thread, it runs when finalization
    blocks every Python thread, and it names what blocked instead of ``os._exit`` skipping the cleanup (Paddle's
    shared-memory files, log and VisualDL flushes) that a normal exit still does."""
    atexit.register(faulthandler.dump_traceback_later, grace, exit=True)


def _run(main: Callable[[], Any]) -> None:
    try:
        code = main()
    except KeyboardInterrupt:
        _interrupted()
    except INPUT_ERRORS as e:
        if isinstance(e, OSError) and _WRAPPED_INTERRUPT.search(str(e)):  # a Ctrl-C, not bad input
            _interrupted()
        print(f"error: {e}", file=sys.stderr)
        report_failure(e)
        sys.exit(2)
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        report_failure(e)
        sys.exit(1)
    except Preempted as e:  # not a failure: every process saved and stopped at the same step
        print(f"preempted: {e}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted() -> NoReturn:
    end_without_report()  # every process of a launch gets the Ctrl-C: none of them failed
    print("interrupted (SIGINT) before the end; files written so far are kept", file=sys.stderr)
    sys.exit(INTERRUPTED_EXIT_CODE)
