"""RandAugment with token labels: timm 0.4.5 RandAugment on the image, the same geometry on the label map.

Image ops follow timm 0.4.5 ``auto_augment.py`` (PIL, magnitudes on a 0..10 scale, per-op
probability 0.5, Gaussian magnitude noise). Geometric ops are PIL affine transforms of the image;
the ``[2, k, H, W]`` token-label map, which covers the whole image at its own resolution, is
resampled nearest-neighbour with the same transform (logits 0 outside the map, ids from the nearest
cell). Colour ops leave the label map alone. All randomness comes from the ``random.Random``
passed per sample.

Label geometry: ``"official"`` resamples the map after each op with the label ops of the official
``tlt/data/random_augment_label.py`` (index-coordinate matrices, scipy ``affine_transform``
order 0); ``"exact"`` expresses each image matrix in the map's coordinates (also right for
non-square images, rotations about the image centre) and resamples once through their composition.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Literal, Sequence, get_args

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from ..utils.registry import TRANSFORMS, ConfigError, PositiveInt
from .label_geometry import (Matrix, affine_label, label_matrix, rotate_label, rotate_matrix, shear_x_label,
                             shear_x_matrix, shear_y_label, shear_y_matrix, translate_x_matrix, translate_x_rel_label,
                             translate_x_rel_matrix, translate_y_matrix, translate_y_rel_label, translate_y_rel_matrix)
from .transforms import (FULL_CROP, IMAGENET_MEAN, Channels, RandomInterpolation, Sample, as_pil, draw_filter,
                         resample_filters)

MAX_LEVEL = 10.0
OP_PROB = 0.5
TRANSLATE_PCT = 0.45
LabelGeometry = Literal["official", "exact"]
LABEL_GEOMETRIES = get_args(LabelGeometry)


# ----------------------------------------------------------------------------- colour ops (timm)
def posterize(img: Image.Image, bits: int) -> Image.Image:
    """Keep the ``bits`` most significant bits of each channel (identity from 8 bits, black at 0:
    ``PosterizeIncreasing`` reaches 0 at magnitude 10, which older Pillow turned black and
    Pillow >= 10 refuses)."""
    if bits >= 8:
        return img
    return ImageOps.posterize(img, bits) if bits >= 1 else Image.new(img.mode, img.size)


def solarize_add(img: Image.Image, add: int, thresh: int = 128) -> Image.Image:
    """Add ``add`` (saturating) to every channel value below ``thresh``."""
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _enhance(kind: type) -> Callable[[Image.Image, float], Image.Image]:
    return lambda img, factor: kind(img).enhance(factor)


# ----------------------------------------------------------------------------- magnitude -> argument
def _negate(v: float, rng: random.Random) -> float:
    return -v if rng.random() > 0.5 else v


def _signed(scale: float) -> Callable:
    return lambda m, rng, _: (_negate(m / MAX_LEVEL * scale, rng),)


def _translate_abs_level(m: float, rng: random.Random, translate_const: float) -> tuple:
    return (_negate(m / MAX_LEVEL * float(translate_const), rng),)


def _enhance_level(m: float, rng: random.Random, _) -> tuple:
    return (m / MAX_LEVEL * 1.8 + 0.1,)


def _enhance_increasing_level(m: float, rng: random.Random, _) -> tuple:
    return (1.0 + _negate(m / MAX_LEVEL * 0.9, rng),)


def _posterize_level(m: float, rng: random.Random, _) -> tuple:
    return (int(m / MAX_LEVEL * 4),)


def _posterize_increasing_level(m: float, rng: random.Random, _) -> tuple:
    return (4 - int(m / MAX_LEVEL * 4),)


def _posterize_original_level(m: float, rng: random.Random, _) -> tuple:
    return (int(m / MAX_LEVEL * 4) + 4,)


def _solarize_level(m: float, rng: random.Random, _) -> tuple:
    return (int(m / MAX_LEVEL * 256),)


def _solarize_increasing_level(m: float, rng: random.Random, _) -> tuple:
    return (256 - int(m / MAX_LEVEL * 256),)


def _solarize_add_level(m: float, rng: random.Random, _) -> tuple:
    return (int(m / MAX_LEVEL * 110),)


def _no_args(m: float, rng: random.Random, _) -> tuple:
    return ()


# ----------------------------------------------------------------------------- op table
@dataclass(frozen=True)
class AugmentOp:
    """One RandAugment op: ``level`` maps (magnitude, rng, translate_const) to its arguments.

    Colour ops set ``image`` (img, *args) -> img; geometric ops set ``matrix`` (arg, W, H) -> PIL
    affine matrix and, where the official code has one, ``official_label`` (label, arg) -> label.
    """

    level: Callable[[float, random.Random, float], tuple]
    image: Callable[..., Image.Image] | None = None
    matrix: Callable[[float, int, int], Matrix] | None = None
    official_label: Callable[[np.ndarray, float], np.ndarray] | None = None

    @property
    def geometric(self) -> bool:
        return self.matrix is not None


_COLOUR = {
    "AutoContrast": (ImageOps.autocontrast, _no_args),
    "Equalize": (ImageOps.equalize, _no_args),
    "Invert": (ImageOps.invert, _no_args),
    "Posterize": (posterize, _posterize_level),
    "PosterizeIncreasing": (posterize, _posterize_increasing_level),
    "PosterizeOriginal": (posterize, _posterize_original_level),
    "Solarize": (ImageOps.solarize, _solarize_level),
    "SolarizeIncreasing": (ImageOps.solarize, _solarize_increasing_level),
    "SolarizeAdd": (solarize_add, _solarize_add_level),
}
_ENHANCERS = (ImageEnhance.Color, ImageEnhance.Contrast, ImageEnhance.Brightness, ImageEnhance.Sharpness)
_COLOUR.update({kind.__name__: (_enhance(kind), _enhance_level) for kind in _ENHANCERS})
_COLOUR.update({kind.__name__ + "Increasing": (_enhance(kind), _enhance_increasing_level) for kind in _ENHANCERS})

OPS: dict[str, AugmentOp] = {name: AugmentOp(level, image=fn) for name, (fn, level) in _COLOUR.items()}
OPS.update({
    "Rotate": AugmentOp(_signed(30.0), matrix=rotate_matrix, official_label=rotate_label),
    "ShearX": AugmentOp(_signed(0.3), matrix=shear_x_matrix, official_label=shear_x_label),
    "ShearY": AugmentOp(_signed(0.3), matrix=shear_y_matrix, official_label=shear_y_label),
    "TranslateX": AugmentOp(_translate_abs_level, matrix=translate_x_matrix),
    "TranslateY": AugmentOp(_translate_abs_level, matrix=translate_y_matrix),
    "TranslateXRel": AugmentOp(_signed(TRANSLATE_PCT), matrix=translate_x_rel_matrix,
                               official_label=translate_x_rel_label),
    "TranslateYRel": AugmentOp(_signed(TRANSLATE_PCT), matrix=translate_y_rel_matrix,
                               official_label=translate_y_rel_label),
})

RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                       "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                       "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
                       "TranslateYRel")
# timm's weight set 0 (``w0``); "...Increasing" ops take the weight of their base op.
CHOICE_WEIGHTS_0 = {"Rotate": 0.3, "ShearX": 0.2, "ShearY": 0.2, "TranslateXRel": 0.1, "TranslateYRel": 0.1,
                    "Color": 0.025, "Sharpness": 0.025, "AutoContrast": 0.025, "Solarize": 0.005,
                    "SolarizeAdd": 0.005, "Contrast": 0.005, "Brightness": 0.005, "Equalize": 0.005,
                    "Posterize": 0.0, "Invert": 0.0}


# ----------------------------------------------------------------------------- config string
@dataclass(frozen=True)
class RandAugmentConfig:
    """Parsed ``rand-...`` string: ``n`` ops per image of magnitude ``m`` (noise std ``mstd``)."""

    num_layers: int = 2
    magnitude: int = 10
    magnitude_std: float = 0.0
    increasing: bool = False
    weight_idx: int | None = None

    @property
    def ops(self) -> tuple[str, ...]:
        return RAND_INCREASING_OPS if self.increasing else RAND_OPS


def parse_config(config_str: str) -> RandAugmentConfig:
    """Parse timm 0.4.5's ``rand-n{N}-m{M}-mstd{S}-inc{0|1}-w{0}`` (sections in any order).

    ``inc0`` selects the plain ops (timm's ``bool("0")`` would select the increasing ones).
    """
    sections = config_str.split("-")
    if sections[0] != "rand":
        raise ConfigError(f"RandAugment config must start with 'rand', got {config_str!r}")
    values = {}
    for section in sections[1:]:
        match = re.fullmatch(r"([a-z]+)(\d.*)", section)
        key = match.group(1) if match else section
        if key not in ("n", "m", "mstd", "inc", "w") or match is None:
            raise ConfigError(f"bad section {section!r} in RandAugment config {config_str!r}; "
                              f"expected n<int>, m<int>, mstd<float>, inc<0|1>, w0")
        try:
            values[key] = float(match.group(2)) if key == "mstd" else int(match.group(2))
        except ValueError:
            raise ConfigError(f"bad value in section {section!r} of RandAugment config {config_str!r}") from None
    if values.get("w", 0) != 0:
        raise ConfigError(f"only weight set w0 exists, got {config_str!r}")
    return RandAugmentConfig(num_layers=values.get("n", 2), magnitude=values.get("m", int(MAX_LEVEL)),
                             magnitude_std=values.get("mstd", 0.0), increasing=bool(values.get("inc", 0)),
                             weight_idx=values.get("w"))


def choice_weights(ops: Sequence[str]) -> list[float]:
    """Weight set 0 for ``ops``, normalised; increasing variants share their base op's weight."""
    missing = [op for op in ops if op.replace("Increasing", "") not in CHOICE_WEIGHTS_0]
    if missing:
        raise ConfigError(f"weight set w0 has no weight for {missing}")
    weights = [CHOICE_WEIGHTS_0[op.replace("Increasing", "")] for op in ops]
    return [w / sum(weights) for w in weights]


# ----------------------------------------------------------------------------- the transform
@TRANSFORMS.register
class RandAugmentWithLabel:
    """timm 0.4.5 ``rand_augment_transform`` on the image and the token-label map together.

    Per sample: ``n`` ops drawn with replacement (weighted without replacement for ``w0``); each
    applies with probability 0.5 at magnitude ``N(m, mstd)`` clipped to [0, 10]. ``img_size``
    sets ``translate_const = int(0.45 * img_size)`` (absolute TranslateX/Y), ``mean`` the fill
    colour, ``interpolation`` the geometric resampling ("random": bilinear or bicubic per op).
    ``ops`` replaces the config string's op list. ``label_geometry``: see the module docstring.
    With a token-label map it must run on the whole image, before the random crop (as in the
    official pipeline); without one (plain labels, e.g. DeiT's timm order) anywhere.
    """

    def __init__(self, config_str: str = "rand-m9-mstd0.5-inc1", img_size: PositiveInt = 224,
                 mean: Channels = IMAGENET_MEAN, interpolation: RandomInterpolation = "random",
                 label_geometry: LabelGeometry = "exact", ops: Sequence[str] | None = None):
        if label_geometry not in LABEL_GEOMETRIES:
            raise ConfigError(f"label_geometry must be one of {LABEL_GEOMETRIES}, got {label_geometry!r}")
        self.config = parse_config(config_str)
        self.op_names = tuple(ops) if ops is not None else self.config.ops
        unknown = [op for op in self.op_names if op not in OPS]
        if unknown or not self.op_names:
            raise ConfigError(f"unknown RandAugment ops {unknown or 'none given'}; known: {sorted(OPS)}")
        self.weights = choice_weights(self.op_names) if self.config.weight_idx is not None else None
        if self.weights is not None and sum(w > 0 for w in self.weights) < self.config.num_layers:
            raise ConfigError(f"{config_str!r} draws {self.config.num_layers} distinct ops but only "
                              f"{sum(w > 0 for w in self.weights)} have a non-zero weight")
        self.translate_const = int(img_size * TRANSLATE_PCT)
        self.fill = tuple(min(255, round(255 * x)) for x in mean)
        self.filters = resample_filters(interpolation, allow_random=True)
        self.label_geometry = label_geometry
        no_official = [op for op in self.op_names if OPS[op].geometric and OPS[op].official_label is None]
        if label_geometry == "official" and no_official:
            raise ConfigError(f"the official code has no label op for {no_official}; use label_geometry='exact'")

    def choose_ops(self, rng: random.Random) -> list[str]:
        """The op names applied (each still with probability 0.5) to one sample."""
        n = self.config.num_layers
        if self.weights is None:
            return rng.choices(self.op_names, k=n)
        names, weights, chosen = list(self.op_names), list(self.weights), []
        for _ in range(n):
            i = rng.choices(range(len(names)), weights=weights)[0]
            chosen.append(names.pop(i))
            weights.pop(i)
        return chosen

    def op_args(self, name: str, rng: random.Random) -> tuple | None:
        """Arguments of op ``name`` for one application, or None when it is skipped."""
        if rng.random() > OP_PROB:
            return None
        magnitude = float(self.config.magnitude)
        if self.config.magnitude_std > 0:
            magnitude = rng.gauss(magnitude, self.config.magnitude_std)
        magnitude = min(MAX_LEVEL, max(0.0, magnitude))
        return OPS[name].level(magnitude, rng, self.translate_const)

    def apply_op(self, name: str, args: tuple, img: Image.Image,
                 resample: int | None) -> tuple[Image.Image, Matrix | None]:
        """Op ``name`` with ``args`` on the image; geometric ops also return their PIL affine matrix."""
        op = OPS[name]
        if not op.geometric:
            return op.image(img, *args), None
        matrix = op.matrix(args[0], img.width, img.height)
        return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=self.fill), matrix

    def __call__(self, sample: Sample, rng: random.Random) -> Sample:
        img, label = as_pil(sample["img"]), sample.get("label")
        if label is not None and tuple(sample.get("crop", FULL_CROP)) != FULL_CROP:
            raise ValueError("with token labels RandAugmentWithLabel must run on the whole image, before the "
                             "random crop")
        chain = []  # "exact": label matrices of the geometric ops, resampled once at the end
        for name in self.choose_ops(rng):
            args = self.op_args(name, rng)
            if args is None:
                continue
            resample = draw_filter(self.filters, rng) if OPS[name].geometric else None
            size = img.size
            img, matrix = self.apply_op(name, args, img, resample)
            if matrix is None or label is None:
                continue
            if self.label_geometry == "official":
                label = OPS[name].official_label(label, args[0])
            else:
                chain.append(label_matrix(matrix, size, label.shape[2:]))
        out = dict(sample, img=img)
        if label is not None:
            out["label"] = affine_label(label, *chain, border="cell") if chain else label
        return out
