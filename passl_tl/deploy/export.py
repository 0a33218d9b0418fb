"""Export an eval-mode model to a Paddle inference model (and optionally ONNX) plus the metadata inference needs."""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import paddle
import paddle.nn as nn

from ..utils.inference import INPUT_NAME, save_program
from . import onnx_model
from .preprocess import Preprocessor

MODEL_PREFIX = "inference"
METADATA_FILE = "inference_meta.json"
FORMAT = "passl_tl.inference"
VERSION = 1
_REQUIRED = ("format", "version", "model_file", "params_file", "num_classes", "transforms", "class_names")


def export_model(model: nn.Layer, out_dir: str, preprocess: Preprocessor,
                 class_names: Sequence[str] | None = None, source: dict[str, str] | None = None,
                 onnx: bool = False) -> list[str]:
    """Save ``model``'s eval forward (logits) for inputs ``[N, 3, H, W]`` float32, H×W being what
    ``preprocess`` produces, as ``out_dir/inference.*`` and write ``out_dir/inference_meta.json``.
    ``onnx``: also ``out_dir/model.onnx``, converted from that program and checked (``onnx.write_onnx``).

    ``model`` stays a dygraph model (see ``save_program``). Returns the written paths.
    """
    if onnx:
        onnx_model.require_packages()
    height, width = preprocess.output_size()
    model.eval()
    with paddle.no_grad():
        try:
            logits = model(paddle.zeros([1, 3, height, width]))
        except ValueError as e:
            raise ValueError(f"the transforms of {preprocess.where} produce {height}x{width} images, "
                             f"which the model rejects: {e}") from e
    if logits.ndim != 2:
        raise ValueError(f"the model must return [N, num_classes] logits in eval mode, got shape {logits.shape}")
    num_classes = logits.shape[1]
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for a model of {num_classes} classes")
    os.makedirs(out_dir, exist_ok=True)
    program, params = save_program(model, os.path.join(out_dir, MODEL_PREFIX), [None, 3, height, width])
    onnx_entry = onnx_model.write_onnx(model, program, params, out_dir, height, width) if onnx else None
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "model_file": os.path.basename(program),
        "params_file": os.path.basename(params),
        "input_name": INPUT_NAME,
        "input_shape": [None, 3, height, width],
        "input_dtype": "float32",
        "output": "logits",
        "num_classes": num_classes,
        "transforms": preprocess.specs,
        "class_names": list(class_names) if class_names is not None else None,
        "source": dict(source or {}),
        "onnx": onnx_entry,
    }
    meta_path = os.path.join(out_dir, METADATA_FILE)
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2, ensure_ascii=False)
        f.write("\n")
    files = [metadata["model_file"], metadata["params_file"]] + ([onnx_entry["file"]] if onnx_entry else [])
    return [os.path.join(out_dir, name) for name in files] + [meta_path]


def read_metadata(model_dir: str) -> dict[str, Any]:
    """The metadata of an exported model directory, checked for the keys inference needs."""
    path = os.path.join(model_dir, METADATA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: export the model with tools/export_model.py")
    with open(path, encoding="utf-8") as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"cannot parse {path}: {e}") from e
    missing = [key for key in _REQUIRED if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    if meta["format"] != FORMAT or meta["version"] != VERSION:
        raise ValueError(f"{path} is {meta['format']} version {meta['version']}; expected {FORMAT} version {VERSION}")
    names = meta["class_names"]
    if names is not None and len(names) != meta["num_classes"]:
        raise ValueError(f"{path}: 'class_names' has {len(names)} entries but 'num_classes' is {meta['num_classes']}")
    files = {key: meta[key] for key in ("model_file", "params_file")}
    if meta.get("onnx"):
        files["onnx.file"] = meta["onnx"]["file"]
    for key, name in files.items():
        if not os.path.isfile(os.path.join(model_dir, name)):
            raise FileNotFoundError(f"{os.path.join(model_dir, name)} (the '{key}' of {path}) does not exist")
    return meta
