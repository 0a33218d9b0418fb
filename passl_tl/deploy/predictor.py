"""Logits and top-k predictions from a dygraph model (config + weights) or an exported model."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import paddle

from ..engine.run_config import load_run_config
from ..models import build_model, load_weights
from ..utils.inference import create_cpu_predictor, onednn_available, run_predictor
from ..utils.threads import available_cpus
from .export import METADATA_FILE, read_metadata
from .preprocess import Preprocessor, config_eval_transforms


class DygraphPredictor:
    """A model built from a config, with weights loaded, run in eval mode on the current device.

    ``preprocess`` follows the config's ``data.val.transforms``; ``class_names`` is None (no names stored).
    """

    def __init__(self, config: str, weights: str, overrides: Sequence[str] = ()):
        cfg = load_run_config(config, overrides)
        self.preprocess = Preprocessor(config_eval_transforms(cfg), f"data.val of {cfg.source}")
        self.model = build_model(cfg)
        load_weights(self.model, weights)
        self.model.eval()
        self.num_classes = self.model.num_classes
        self.class_names = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``[N, 3, H, W]`` float32 → ``[N, num_classes]`` logits."""
        with paddle.no_grad():
            return self.model(paddle.to_tensor(batch)).numpy()


class InferencePredictor:
    """An exported model directory run by ``paddle.inference`` on the CPU (oneDNN kernels where the
    Paddle build has them), with its stored preprocessing and class names."""

    def __init__(self, model_dir: str, threads: int = 0):
        meta = read_metadata(model_dir)
        self.predictor = create_cpu_predictor(os.path.join(model_dir, meta["model_file"]),
                                              os.path.join(model_dir, meta["params_file"]),
                                              threads or available_cpus(), onednn=onednn_available())
        self.preprocess = Preprocessor(meta["transforms"], os.path.join(model_dir, METADATA_FILE))
        self.num_classes = meta["num_classes"]
        self.class_names = meta["class_names"]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``[N, 3, H, W]`` float32 → ``[N, num_classes]`` logits."""
        return run_predictor(self.predictor, batch)


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(class ids ``[N, k]``, softmax probabilities ``[N, k]``), most probable first (ties: lower id)."""
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    ids = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(probs, ids, axis=1)
