"""A run's config: a YAML file over :data:`DEFAULTS`, with the image size said once (``model.img_size``), checked
before anything is built: the plain numbers (:data:`BOUNDS`) and the model mapping."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import paddle

from .. import datasets, models  # noqa: F401  (register the transforms and the models)
from ..utils.config import Config, load_config
from ..utils.cpu_memory import keep_freed_memory
from ..utils.logger import get_logger
from ..utils.registry import MODELS, TRANSFORMS, ConfigError, accepted_arguments, check_argument
from ..utils.threads import set_cpu_threads
from .defaults import BOUNDS, DEFAULTS

IMAGE_SIZE_ARGUMENTS = ("size", "img_size")  # transform arguments that are the model's input size


def load_run_config(path: str, overrides: Iterable[str] = ()) -> Config:
    """``path`` (with its ``_base_`` files) over the defaults, ``overrides`` applied; then every data
    transform that takes an input size (:data:`IMAGE_SIZE_ARGUMENTS`) and does not set one gets the
    model's square ``img_size``, so that a fine-tune config or ``-o model.img_size=384`` changes the
    model and its crops together. :func:`check_run_config` checks the result."""
    cfg = load_config(path, overrides, DEFAULTS)
    check_run_config(cfg)
    side = square_side(model_img_size(cfg["model"]))
    if side is not None:
        for split in ("train", "val"):
            dataset = cfg["data"][split]
            if isinstance(dataset, Mapping) and isinstance(dataset.get("transforms"), list):
                dataset["transforms"] = [with_image_size(spec, side) for spec in dataset["transforms"]]
    return cfg


def check_run_config(cfg: Config) -> None:
    """Values that cannot be right, before anything is built: each number of :data:`BOUNDS` (``epochs`` an int
    >= 1, batch sizes >= 1, ``seed`` >= 0, ...) and the model mapping (its registered name, keys and the values
    of its backbone's and head's annotated arguments: ``drop_path_rate`` in [0, 1), ``num_classes`` >= 1, image
    sizes >= 1, ...), and ``class_names`` a list of strings. The other component mappings are checked by
    ``Trainer.check_config`` through the registry.
    Errors name the key path, the value and the file."""
    for dotted, hint in BOUNDS.items():
        *sections, key = dotted.split(".")
        node: Any = cfg
        for section in sections:
            node = node.get(section) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and key in node:
            check_argument(key, node[key], hint, f"{'.'.join(sections)} of {cfg.source}" if sections else cfg.source)
    if cfg.get("model"):
        MODELS.check(cfg["model"], f"model of {cfg.source}")
    names = cfg.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ConfigError(f"class_names in {cfg.source} must be a list of names (strings), got {names!r}")


def model_img_size(model: Any) -> Any:
    """``img_size`` of a model mapping: a preset's, or its backbone's (``name: Classifier``)."""
    if not isinstance(model, Mapping):
        return None
    backbone = model.get("backbone")
    return model.get("img_size", backbone.get("img_size") if isinstance(backbone, Mapping) else None)


def square_side(img_size: Any) -> int | None:
    """The side of a square ``img_size`` (an int or a pair of equal ints), else None."""
    if isinstance(img_size, int) and not isinstance(img_size, bool):
        return img_size
    if isinstance(img_size, (list, tuple)) and len(img_size) == 2 and img_size[0] == img_size[1]:
        return square_side(img_size[0])
    return None


def with_image_size(spec: Any, side: int) -> Any:
    """``spec`` with ``side`` as each input-size argument its transform takes and it leaves unset."""
    if not isinstance(spec, Mapping) or spec.get("name") not in TRANSFORMS:
        return spec  # the registry names the problem when the transform is built
    accepted = accepted_arguments(TRANSFORMS.get(spec["name"]))[0]
    return {**spec, **{key: side for key in IMAGE_SIZE_ARGUMENTS if key in accepted and key not in spec}}


def choose_device(cfg: Config) -> str:
    """The device a run of ``cfg`` uses, also set as its ``device`` (the run's saved config says where it ran): the
    configured one, but the CPU for a GPU when this Paddle is built without CUDA (the ImageNet configs say ``gpu``),
    with a warning that ``-o device=cpu`` makes the choice explicit."""
    device = cfg["device"]
    if str(device).split(":")[0] == "gpu" and not paddle.is_compiled_with_cuda():
        get_logger().warning(f"device {device} in {cfg.source}: this Paddle is built without CUDA, running on the "
                             f"CPU (-o device=cpu says so and silences this warning)")
        cfg["device"] = device = "cpu"
    return device


def apply_device(cfg: Config) -> str:
    """Run this process on ``cfg``'s device (``choose_device``) with its ``threads`` CPU threads; on the CPU, freed
    memory is kept for the next tensors (``utils.cpu_memory``: most of an elementwise op's time otherwise)."""
    device = choose_device(cfg)
    paddle.set_device(device)
    set_cpu_threads(cfg["threads"])
    if device == "cpu":
        keep_freed_memory()
    return device
