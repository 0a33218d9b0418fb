"""passl_tl: vision transformers trained with token labeling (LV-ViT) on PaddlePaddle."""
__version__ = "0.1.0"

_MODEL_API = ("build_model", "create_model", "load_weights")


def __getattr__(name: str):
    # Imported lazily so that `passl_tl.utils` stays importable without building the model zoo.
    if name in _MODEL_API:
        from . import models
        return getattr(models, name)
    raise AttributeError(f"module 'passl_tl' has no attribute '{name}'")
