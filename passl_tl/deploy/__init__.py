"""Deployment: export to a Paddle inference model (and ONNX), eval preprocessing, predictors, class names."""
from .class_names import imagenet_class_names, read_class_names, resolve_class_names
from .export import METADATA_FILE, export_model, read_metadata
from .predictor import (BACKENDS, DygraphPredictor, ExportedPredictor, InferencePredictor, OnnxPredictor,
                        exported_backend, load_exported, top_k)
from .preprocess import Preprocessor, config_eval_transforms

__all__ = ["BACKENDS", "METADATA_FILE", "DygraphPredictor", "ExportedPredictor", "InferencePredictor",
           "OnnxPredictor", "Preprocessor", "config_eval_transforms", "export_model", "exported_backend",
           "imagenet_class_names", "load_exported", "read_class_names", "read_metadata", "resolve_class_names",
           "top_k"]
