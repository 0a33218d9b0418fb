"""Errors that end a run with a message instead of a traceback."""


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. the loss stays non-finite); the message says why and what was kept."""
