"""SHA-256 of files, read in blocks: checkpoints and label files share it, and importing it pulls in nothing heavy."""
from __future__ import annotations

import hashlib

BLOCK = 1 << 22


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
