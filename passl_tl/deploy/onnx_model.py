"""ONNX: a saved Paddle inference program converted by paddle2onnx, checked against the dygraph model with ONNX
Runtime, and ONNX Runtime CPU sessions that run it. Both packages are optional (``pip install -e ".[onnx]"``)."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from typing import Any, Sequence

import numpy as np
import paddle
import paddle.nn as nn

from ..utils.errors import MissingExtra

ONNX_FILE = "model.onnx"
OPSET = 17  # ONNX Runtime >= 1.13; the first opset with LayerNormalization, which paddle2onnx then emits
PACKAGES = ("paddle2onnx", "onnxruntime")
CHECK_IMAGES = 2  # random images the converted model is checked on (a batch of 2: the batch size is dynamic)
CHECK_ATOL = CHECK_RTOL = 1e-4  # for any model; the fixture models agree to ~5e-7 (tests/deploy/test_onnx.py)

# paddle2onnx aborts its process (SIGABRT) on an operator it cannot convert: it runs in a child process.
# Its ``save_file`` path would also fold constants with polygraphy, which may pip-install packages; it is not used.
_CONVERT = """
import sys
import paddle2onnx
program, params, out, opset = sys.argv[1:]
onnx_model = paddle2onnx.export(program, params, opset_version=int(opset), auto_upgrade_opset=False)
with open(out, "wb") as f:
    f.write(onnx_model)
"""


def missing_packages(names: Sequence[str] = PACKAGES) -> list[str]:
    """Those of ``names`` that are not installed."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def require_packages(names: Sequence[str] = PACKAGES, what: str = "ONNX export") -> None:
    """``MissingExtra`` naming the extra to install unless the packages ``names`` are installed."""
    missing = missing_packages(names)
    if missing:
        raise MissingExtra(f"{what} needs {' and '.join(missing)}: pip install -e \".[onnx]\"")


def convert(program: str, params: str, out: str, opset: int = OPSET) -> None:
    """Write the ONNX model of the Paddle inference program ``program`` + ``params`` to ``out``."""
    done = subprocess.run([sys.executable, "-c", _CONVERT, program, params, out, str(opset)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0 or not os.path.isfile(out):
        log = [line for line in done.stdout.splitlines() if line.strip()]
        raise RuntimeError(f"paddle2onnx {importlib.metadata.version('paddle2onnx')} could not convert {program} "
                           f"to ONNX opset {opset} (exit code {done.returncode}); its output ends:\n"
                           + "\n".join(log[-12:]))


def create_session(path: str, threads: int) -> Any:
    """An ONNX Runtime session on the CPU with ``threads`` threads for each operator (one operator at a time)."""
    require_packages(["onnxruntime"], "ONNX inference")
    import onnxruntime as ort
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: not its notes on the unused initializers paddle2onnx leaves
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_session(session: Any, batch: np.ndarray) -> np.ndarray:
    """Feed ``batch`` (float32) to the session's single input; return its first output."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def write_onnx(model: nn.Layer, program: str, params: str, out_dir: str, height: int, width: int) -> dict[str, Any]:
    """Convert the program saved from ``model`` to ``out_dir/model.onnx`` and check it: ONNX Runtime's logits
    must be the eval-mode ``model``'s on ``CHECK_IMAGES`` random images (paddle2onnx can mis-convert an
    operator silently). Returns the metadata entry; nothing is left in ``out_dir`` if the check fails."""
    require_packages()
    path, trial = os.path.join(out_dir, ONNX_FILE), os.path.join(out_dir, ONNX_FILE + ".unchecked")
    try:
        convert(program, params, trial)
        images = np.random.default_rng(0).standard_normal((CHECK_IMAGES, 3, height, width), dtype=np.float32)
        logits = run_session(create_session(trial, 1), images)
        with paddle.no_grad():
            expected = model(paddle.to_tensor(images)).numpy()
        same_shape = logits.shape == expected.shape
        diff = float(np.abs(logits - expected).max()) if same_shape else float("inf")
        if not (same_shape and np.allclose(logits, expected, rtol=CHECK_RTOL, atol=CHECK_ATOL)):
            found = f"by up to {diff:.3g}" if same_shape else f"in shape, {logits.shape} for {expected.shape}"
            raise ValueError(f"the ONNX model converted by paddle2onnx gives logits differing from the Paddle model's "
                             f"{found} on {CHECK_IMAGES} random images (tolerance {CHECK_ATOL:g} + {CHECK_RTOL:g} x "
                             f"|logit|): an operator was converted wrongly; {path} not written")
        os.replace(trial, path)
    finally:
        if os.path.exists(trial):
            os.remove(trial)
    return {"file": ONNX_FILE, "opset": OPSET, "check_max_abs_diff": diff}
