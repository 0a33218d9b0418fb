"""Checksum manifests of label directories, so that a copy of 1.28 M label files (or a pack's shards) can be
checked against the original before weeks of training read it.

A manifest lists every file under the directory, in ``sha256sum`` format (``<sha256>  <relative path>``, sorted by
path), so ``cd DIR && sha256sum -c MANIFEST`` checks it too. It covers any layout: per-image ``.npy`` labels, a
pack's ``index.json`` and shards, the official ``.pt`` files. By default it is written beside the directory
(``<DIR>.sha256``), leaving the directory as it is; a manifest inside the directory is not listed in itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from ..utils.atomic import write_file_atomic
from ..utils.checksum import file_sha256

MANIFEST_SUFFIX = ".sha256"
SEPARATOR = "  "  # sha256sum's text-mode separator


def default_manifest(directory: str) -> str:
    """``<directory>.sha256``, beside the directory."""
    return os.path.normpath(directory) + MANIFEST_SUFFIX


def list_files(directory: str, manifest: str) -> list[str]:
    """Relative paths (``/``-separated) of the files under ``directory``, sorted, without ``manifest``."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"label directory {directory} does not exist")
    skip = os.path.abspath(manifest)
    found = []
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            if os.path.abspath(path) != skip:
                found.append(os.path.relpath(path, directory).replace(os.sep, "/"))
    return sorted(found)


def write_manifest(directory: str, names: list[str], manifest: str, step: Callable[[], object] = lambda: None) -> None:
    """Hash the files ``names`` (:func:`list_files`) of ``directory`` into ``manifest``, written atomically (a
    killed run leaves no partial manifest). ``step`` is called after each file."""
    if not names:
        raise FileNotFoundError(f"label directory {directory} holds no files")
    write_file_atomic(manifest, lambda tmp: _hash_into(tmp, directory, names, step))


def _hash_into(path: str, directory: str, names: list[str], step: Callable[[], object]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for name in names:
            if "\n" in name or "\\" in name:
                raise ValueError(f"{os.path.join(directory, name)}: a name with a newline or backslash cannot be "
                                 f"listed in a sha256sum manifest; rename it")
            f.write(f"{file_sha256(os.path.join(directory, name))}{SEPARATOR}{name}\n")
            step()


def read_manifest(manifest: str) -> dict[str, str]:
    """``{relative path: sha256}``; a malformed line is an error naming the manifest and the line number."""
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"manifest {manifest} does not exist (write it with --write)")
    entries = {}
    with open(manifest, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            digest, separator, name = line.rstrip("\n").partition(SEPARATOR)
            name = name.lstrip("*")  # sha256sum's binary-mode marker
            if not separator or len(digest) != 64 or not name or digest.strip("0123456789abcdef"):
                raise ValueError(f"{manifest} line {number} is not '<sha256>  <path>': {line.strip()!r}")
            entries[name] = digest
    return entries


@dataclass
class Verification:
    """What differs between a directory and its manifest; each list names files relative to the directory."""

    matched: int = 0
    changed: list[str] = field(default_factory=list)  # content differs from the manifest's checksum
    missing: list[str] = field(default_factory=list)  # in the manifest, not in the directory
    unlisted: list[str] = field(default_factory=list)  # in the directory, not in the manifest

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.unlisted)


def verify_manifest(directory: str, expected: dict[str, str], present: list[str],
                    step: Callable[[], object] = lambda: None) -> Verification:
    """Hash every file of ``directory`` that the manifest ``expected`` (:func:`read_manifest`) lists and compare;
    the ``present`` files (:func:`list_files`) it does not list are reported too. ``step`` is called after each
    listed file."""
    result = Verification(unlisted=sorted(set(present) - set(expected)))
    for name, digest in sorted(expected.items()):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            result.missing.append(name)
        elif file_sha256(path) != digest:
            result.changed.append(name)
        else:
            result.matched += 1
        step()
    return result
