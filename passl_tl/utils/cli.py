"""What the command-line tools share: config arguments and error reporting."""
from __future__ import annotations

import argparse
import pickle
import sys
import zipfile
from typing import Any, Callable

from .dist import report_failure
from .errors import TrainingStopped
from .registry import ConfigError

# Errors that mean bad input (a config, a path, a file's content): reported in one line.
INPUT_ERRORS = (ConfigError, ValueError, OSError, pickle.UnpicklingError, zipfile.BadZipFile)


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True,
                         config_help: str = "YAML config file") -> None:
    """``-c CONFIG`` and ``-o key.sub=value ...`` overrides."""
    parser.add_argument("-c", "--config", required=required, help=config_help)
    parser.add_argument("-o", "--override", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config values with type checking, e.g. -o optimizer.lr=1e-3 "
                             "data.batch_size=64")


def run_tool(main: Callable[[], Any]) -> None:
    """Run a tool's ``main()``: bad input ends with ``error: ...`` on stderr and exit code 2, a run
    that had to stop (``TrainingStopped``) with exit code 1, both without a traceback; an integer
    result is the exit code."""
    try:
        code = main()
    except INPUT_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        report_failure(e)
        sys.exit(2)
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        report_failure(e)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
