"""The eval preprocessing of a config (``data.val.transforms``) applied to single decoded images."""
from __future__ import annotations

import inspect
import random
from typing import Any, Mapping, Sequence

import numpy as np

from ..datasets.imagenet_token_label import build_transforms
from ..datasets.transforms import to_chw_float
from ..utils.config import Config
from ..utils.registry import TRANSFORMS, ConfigError

# Two probe image sizes (height, width) of opposite orientation: a fixed-size pipeline maps both alike.
_PROBE_SIZES = ((150, 200), (200, 150))


def config_eval_transforms(cfg: Config) -> list[Any]:
    """The ``data.val.transforms`` mappings of ``cfg`` (they define the inference preprocessing)."""
    val = cfg["data"].get("val")
    specs = val.get("transforms") if isinstance(val, Mapping) else None
    if not specs or not isinstance(specs, list):
        raise ConfigError(f"{cfg.where('data.val.transforms')} must list the eval transforms "
                          f"(e.g. ResizeCropPct and Normalize): inference preprocesses images with them")
    return list(specs)


def with_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A transform mapping with every argument it leaves at its default written out."""
    params = inspect.signature(TRANSFORMS.get(spec["name"])).parameters.values()
    args = {p.name: spec.get(p.name, p.default) for p in params
            if p.name in spec or p.default is not inspect.Parameter.empty}
    return {"name": spec["name"], **args, **spec}


class Preprocessor:
    """HWC uint8 RGB image → float32 ``[3, H, W]`` through the transform mappings ``specs``, built
    via ``TRANSFORMS`` (``where``, e.g. ``data.val of CONFIG``, names their source in errors).
    The ``specs`` attribute keeps them with their defaults written out."""

    def __init__(self, specs: Sequence[Mapping[str, Any]], where: str):
        self.where = where
        self.transforms = build_transforms(specs, where)
        self.specs = [with_defaults(spec) for spec in specs]

    def __call__(self, img: np.ndarray) -> np.ndarray:
        sample, rng = {"img": img}, random.Random(0)
        for transform in self.transforms:
            sample = transform(sample, rng)
        out = sample["img"]
        return out if isinstance(out, np.ndarray) and out.dtype == np.float32 else to_chw_float(out)

    def output_size(self) -> tuple[int, int]:
        """(H, W) every image is brought to; an error unless the transforms produce one fixed size."""
        shapes = [self(np.zeros((h, w, 3), dtype=np.uint8)).shape for h, w in _PROBE_SIZES]
        if shapes[0] != shapes[1] or len(shapes[0]) != 3 or shapes[0][0] != 3:
            raise ConfigError(f"the transforms of {self.where} must bring every image to one [3, H, W] size "
                              f"(e.g. ResizeCropPct, then Normalize); images of {_PROBE_SIZES} (H, W) became "
                              f"{[list(s) for s in shapes]}")
        return shapes[0][1], shapes[0][2]
