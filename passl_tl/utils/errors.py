"""Errors that end a run with a message instead of a traceback."""


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. the loss stays non-finite); the message says why and what was kept."""


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: a temporary failure, to be retried (here: with --resume auto)


class Preempted(RuntimeError):
    """The run stopped on a signal (SIGTERM, SIGINT) after saving its state; the message says where and how to
    continue."""


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` extra that provides it."""
