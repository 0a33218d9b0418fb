"""Logits and top-k predictions from a dygraph model (config + weights) or an exported model (Paddle
Inference or ONNX Runtime)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import paddle

from ..engine.run_config import load_run_config
from ..models import build_model, load_weights
from ..utils.inference import create_cpu_predictor, onednn_available, run_predictor
from ..utils.threads import available_cpus
from . import onnx_model
from .export import METADATA_FILE, read_metadata
from .preprocess import Preprocessor, config_eval_transforms


class DygraphPredictor:
    """A model built from a config, with weights loaded, run in eval mode on the current device.

    ``preprocess`` follows the config's ``data.val.transforms``; ``class_names`` are the config's (None if unset).
    """

    def __init__(self, config: str, weights: str, overrides: Sequence[str] = ()):
        cfg = load_run_config(config, overrides)
        self.preprocess = Preprocessor(config_eval_transforms(cfg), f"data.val of {cfg.source}")
        self.model = build_model(cfg)
        load_weights(self.model, weights)
        self.model.eval()
        self.num_classes = self.model.num_classes
        self.class_names = cfg["class_names"]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``[N, 3, H, W]`` float32 → ``[N, num_classes]`` logits."""
        with paddle.no_grad():
            return self.model(paddle.to_tensor(batch)).numpy()


class ExportedPredictor:
    """A directory written by ``export_model``: its stored preprocessing, class count and names. Subclasses
    run one of its models (``backend``) on the CPU with ``threads`` threads (0: all available CPUs)."""
    backend: str

    def __init__(self, model_dir: str, threads: int = 0):
        self.threads = threads or available_cpus()
        self.meta = read_metadata(model_dir)
        self.preprocess = Preprocessor(self.meta["transforms"], os.path.join(model_dir, METADATA_FILE))
        self.num_classes = self.meta["num_classes"]
        self.class_names = self.meta["class_names"]


class InferencePredictor(ExportedPredictor):
    """The Paddle inference model of an exported directory, run by ``paddle.inference`` (oneDNN kernels where
    the Paddle build has them)."""
    backend = "paddle"

    def __init__(self, model_dir: str, threads: int = 0):
        super().__init__(model_dir, threads)
        self.predictor = create_cpu_predictor(os.path.join(model_dir, self.meta["model_file"]),
                                              os.path.join(model_dir, self.meta["params_file"]),
                                              self.threads, onednn=onednn_available())

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``[N, 3, H, W]`` float32 → ``[N, num_classes]`` logits."""
        return run_predictor(self.predictor, batch)


class OnnxPredictor(ExportedPredictor):
    """The ONNX model of an exported directory (``export_model(..., onnx=True)``), run by ONNX Runtime."""
    backend = "onnxruntime"

    def __init__(self, model_dir: str, threads: int = 0):
        super().__init__(model_dir, threads)
        if not self.meta.get("onnx"):
            raise FileNotFoundError(f"{model_dir} has no ONNX model: export it with tools/export_model.py --onnx")
        self.session = onnx_model.create_session(os.path.join(model_dir, self.meta["onnx"]["file"]), self.threads)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``[N, 3, H, W]`` float32 → ``[N, num_classes]`` logits."""
        return onnx_model.run_session(self.session, batch)


BACKENDS = {cls.backend: cls for cls in (InferencePredictor, OnnxPredictor)}


def exported_backend(model_dir: str, backend: str = "auto") -> str:
    """``"paddle"`` or ``"onnxruntime"``; ``"auto"``: ONNX Runtime (the faster on the CPU, see the README) when
    the directory has an ONNX model and onnxruntime is installed, else Paddle Inference."""
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be auto, {' or '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    has_onnx = bool(read_metadata(model_dir).get("onnx"))
    return "onnxruntime" if has_onnx and not onnx_model.missing_packages(["onnxruntime"]) else "paddle"


def load_exported(model_dir: str, backend: str = "auto", threads: int = 0) -> ExportedPredictor:
    """The predictor of an exported directory on ``backend`` (see ``exported_backend``)."""
    return BACKENDS[exported_backend(model_dir, backend)](model_dir, threads)


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(class ids ``[N, k]``, softmax probabilities ``[N, k]``), most probable first (ties: lower id)."""
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    ids = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(probs, ids, axis=1)
