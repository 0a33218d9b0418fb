"""Deployment: export to a Paddle inference model, eval preprocessing, predictors, class names."""
from .class_names import imagenet_class_names, read_class_names, resolve_class_names
from .export import METADATA_FILE, export_model, read_metadata
from .predictor import DygraphPredictor, InferencePredictor, top_k
from .preprocess import Preprocessor, config_eval_transforms

__all__ = ["METADATA_FILE", "DygraphPredictor", "InferencePredictor", "Preprocessor", "config_eval_transforms",
           "export_model", "imagenet_class_names", "read_class_names", "read_metadata", "resolve_class_names",
           "top_k"]
