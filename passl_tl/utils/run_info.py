"""What a run needs to be traced and rerun: command line, package versions, source commit."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from typing import Any, Sequence

PACKAGES = ("passl_tl", "paddlepaddle", "paddlepaddle-gpu", "numpy", "pyyaml", "opencv-python",
            "opencv-python-headless", "visualdl")
SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (those not installed are left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def git_state(directory: str = SOURCE_DIR) -> dict[str, Any] | None:
    """Commit and uncommitted-change flag of the git checkout holding ``directory``; None outside one."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def run_info(argv: Sequence[str]) -> dict[str, Any]:
    return {
        "command": [sys.executable, *argv],
        "cwd": os.getcwd(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "git": git_state(),
        "environment": {k: v for k, v in os.environ.items()
                        if k.startswith(("PADDLE_", "FLAGS_", "CUDA_VISIBLE", "OMP_NUM", "PASSL_TL_"))},
    }


def write_run_info(path: str, argv: Sequence[str]) -> None:
    """Write ``run_info(argv)`` as JSON to ``path``."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(run_info(argv), f, indent=2)
        f.write("\n")
