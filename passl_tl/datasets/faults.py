"""Bad inputs a dataset replaced while loading: a warning and a ``<path>\\t<reason>`` report line per file.

The report files live in a run's report directory: ``skipped_images.txt`` (images replaced by
another sample, ``bad_image: skip``) and ``label_fallbacks.txt`` (token labels replaced by the
ground-truth map, ``missing_label``/``bad_label: ground_truth``). DataLoader workers are separate
processes with their own copy of a dataset's :class:`FaultLog`: each appends one line with one
write (``O_APPEND``) under an exclusive ``flock``, after reading what the others appended, so a
file lists each path once and it is warned about once per run; :func:`read_fault_report` also
de-duplicates (for file systems without locks).
"""
from __future__ import annotations

import fcntl
import logging
import os

logger = logging.getLogger(__name__)

REPORT_FILES = {"skipped_images": "skipped_images.txt", "label_fallbacks": "label_fallbacks.txt"}
_ACTIONS = {"skipped_images": "skipping image", "label_fallbacks": "using the ground-truth label map instead of"}


def _listed_paths(data: bytes) -> list[str]:
    """The paths (first column) of complete report lines, in order, repeats included."""
    return [line.split(b"\t", 1)[0].decode("utf-8", "surrogateescape")
            for line in data.split(b"\n")[:-1] if b"\t" in line]


def read_fault_report(report_dir: str) -> dict[str, list[str]]:
    """``{"skipped_images": [path, ...], "label_fallbacks": [path, ...]}``: each file listed once, in
    the order first recorded (empty lists when nothing was recorded)."""
    report = {}
    for kind, name in REPORT_FILES.items():
        path = os.path.join(report_dir, name)
        data = b""
        if os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
        report[kind] = list(dict.fromkeys(_listed_paths(data)))
    return report


class FaultLog:
    """Records replaced inputs once per path: in memory, and in the report directory once one is set."""

    def __init__(self) -> None:
        self.set_report_dir(None)

    def set_report_dir(self, report_dir: str | None) -> None:
        """Append to the report files in ``report_dir`` (created on the first record); forget what was seen."""
        self.report_dir = report_dir
        self._known: dict[str, set[str]] = {kind: set() for kind in REPORT_FILES}
        self._read_up_to: dict[str, int] = dict.fromkeys(REPORT_FILES, 0)

    def record(self, kind: str, path: str, reason: str, warn: bool = True) -> None:
        """Record ``path`` (replaced because of ``reason``) under ``kind``; warn the first time."""
        if path in self._known[kind] or (self.report_dir is not None and not self._append(kind, path, reason)):
            return
        self._known[kind].add(path)
        if warn:
            where = f" (listed in {os.path.join(self.report_dir, REPORT_FILES[kind])})" if self.report_dir else ""
            logger.warning("%s %s: %s%s", _ACTIONS[kind], path, reason, where)

    def _append(self, kind: str, path: str, reason: str) -> bool:
        """Append ``path`` unless another process listed it first (then False); read what others appended."""
        os.makedirs(self.report_dir, exist_ok=True)
        line = f"{path}\t{' '.join(reason.split())}\n".encode("utf-8", "surrogateescape")
        with open(os.path.join(self.report_dir, REPORT_FILES[kind]), "ab+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released on close
            f.seek(self._read_up_to[kind])
            appended = f.read()
            self._known[kind].update(_listed_paths(appended))
            new = path not in self._known[kind]
            if new:  # one write, appended (O_APPEND); a line cut short by a crash is ended first
                os.write(f.fileno(), b"\n" * (appended[-1:] not in (b"", b"\n")) + line)
                self._read_up_to[kind] = os.fstat(f.fileno()).st_size
            else:
                self._read_up_to[kind] += appended.rfind(b"\n") + 1  # up to the last complete line
        return new
