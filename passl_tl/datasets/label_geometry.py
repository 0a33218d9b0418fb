"""Geometry shared by images and token-label maps: PIL affine matrices, their expression in label-map
coordinates, nearest-neighbour resampling of ``[2, k, H, W]`` label maps, and the official label ops
(``tlt/data/random_augment_label.py``: index-coordinate matrices, scipy ``affine_transform`` order 0)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


BORDERS = ("scipy", "cell")

Matrix = tuple[float, float, float, float, float, float]


# ----------------------------------------------------------------------------- label resampling
def affine_label(label: np.ndarray, *matrices: Sequence[float], border: str = "scipy") -> np.ndarray:
    """Nearest-neighbour affine resampling of a ``[2, k, H, W]`` label map (plane 0 logits, 1 ids).

    A matrix ``(a, b, c, d, e, f)`` acts on index coordinates, rows first: output cell (r, q) reads
    the input at (row, col) = (a*r + b*q + c, d*r + e*q + f) rounded half up, as scipy
    ``ndimage.affine_transform(order=0)`` with the official 3x4 matrix. Several matrices (in the
    order the transforms are applied) are resampled once, through the composed mapping. Outside
    the map logits are 0 and ids take the nearest border cell. A point is outside when, at any
    step, a coordinate leaves [0, n - 1] (``border="scipy"``: scipy's 'constant' mode, the
    official op) or leaves every cell, [-0.5, n - 0.5) (``border="cell"``).
    """
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    label = np.asarray(label)
    if label.ndim != 4 or label.shape[0] != 2:
        raise ValueError(f"token-label map must have shape [2, k, H, W], got {list(label.shape)}")
    h, w = label.shape[2:]
    rows = np.arange(h, dtype=np.float64)[:, None]
    cols = np.arange(w, dtype=np.float64)[None, :]
    row_idx, col_idx, inside = rows, cols, np.ones((h, w), dtype=bool)
    for matrix in reversed(matrices):
        a, b, c, d, e, f = (float(v) for v in matrix)
        rows, cols = a * rows + b * cols + c, d * rows + e * cols + f
        row_idx, col_idx = np.floor(rows + 0.5), np.floor(cols + 0.5)
        ref_rows, ref_cols = (rows, cols) if border == "scipy" else (row_idx, col_idx)
        inside &= (ref_rows >= 0) & (ref_rows <= h - 1) & (ref_cols >= 0) & (ref_cols <= w - 1)
    row_idx = np.broadcast_to(np.clip(row_idx, 0, h - 1).astype(np.intp), (h, w))
    col_idx = np.broadcast_to(np.clip(col_idx, 0, w - 1).astype(np.intp), (h, w))
    out = label[:, :, row_idx, col_idx]
    out[0] = np.where(inside, out[0], 0)
    return out


def label_matrix(image_matrix: Sequence[float], image_size: Sequence[int], label_hw: Sequence[int]) -> Matrix:
    """The index-coordinate matrix (for ``affine_label``) of a PIL affine ``image_matrix``.

    PIL maps output pixel centre (x + .5, y + .5) to input (a*x' + b*y' + c, d*x' + e*y' + f) with
    x first; the label map of ``label_hw`` (H, W) cells spans the image of ``image_size`` (W, H).
    """
    sx, sy = label_hw[1] / image_size[0], label_hw[0] / image_size[1]
    pil = np.array([list(image_matrix[:3]), list(image_matrix[3:]), [0.0, 0.0, 1.0]])
    index_to_image = np.array([[1 / sx, 0.0, 0.5 / sx], [0.0, 1 / sy, 0.5 / sy], [0.0, 0.0, 1.0]])
    m = np.linalg.inv(index_to_image) @ pil @ index_to_image  # acts on (col, row, 1)
    return (m[1, 1], m[1, 0], m[1, 2], m[0, 1], m[0, 0], m[0, 2])


# ----------------------------------------------------------------------------- official label ops
def _rotation_about(angle: float, centre_0: float, centre_1: float) -> Matrix:
    """Rotation matrix about a centre, built (and rounded to 15 digits) as PIL's ``Image.rotate``."""
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
    return (cos, sin, cos * -centre_0 + sin * -centre_1 + centre_0,
            -sin, cos, -sin * -centre_0 + cos * -centre_1 + centre_1)


def rotate_label(label: np.ndarray, degrees: float) -> np.ndarray:
    """Official ``rotate_label``: rotation by ``degrees`` about index (H/2, W/2)."""
    h, w = np.shape(label)[2:]
    return affine_label(label, _rotation_about(math.radians(degrees), h / 2.0, w / 2.0))


def shear_x_label(label: np.ndarray, factor: float) -> np.ndarray:
    """Official label op of ShearX: the column reads ``col + factor * row``."""
    return affine_label(label, (1, 0, 0, factor, 1, 0))


def shear_y_label(label: np.ndarray, factor: float) -> np.ndarray:
    """Official label op of ShearY: the row reads ``row + factor * col``."""
    return affine_label(label, (1, factor, 0, 0, 1, 0))


def translate_x_rel_label(label: np.ndarray, pct: float) -> np.ndarray:
    """Official label op of TranslateXRel: shift by ``pct`` of the map width."""
    return affine_label(label, (1, 0, 0, 0, 1, pct * np.shape(label)[3]))


def translate_y_rel_label(label: np.ndarray, pct: float) -> np.ndarray:
    """Official label op of TranslateYRel: shift by ``pct`` of the map height."""
    return affine_label(label, (1, 0, pct * np.shape(label)[2], 0, 1, 0))


# ----------------------------------------------------------------------------- image matrices (PIL)
# Each maps (argument, image width, height) to the PIL ``Image.AFFINE`` data of the op's image transform.
def rotate_matrix(degrees: float, width: int, height: int) -> Matrix:
    """PIL matrix of ``Image.rotate(degrees)`` (counter-clockwise about the image centre)."""
    return _rotation_about(-math.radians(degrees % 360.0), width / 2.0, height / 2.0)


def shear_x_matrix(factor: float, width: int, height: int) -> Matrix:
    return (1, factor, 0, 0, 1, 0)


def shear_y_matrix(factor: float, width: int, height: int) -> Matrix:
    return (1, 0, 0, factor, 1, 0)


def translate_x_matrix(pixels: float, width: int, height: int) -> Matrix:
    return (1, 0, pixels, 0, 1, 0)


def translate_y_matrix(pixels: float, width: int, height: int) -> Matrix:
    return (1, 0, 0, 0, 1, pixels)


def translate_x_rel_matrix(pct: float, width: int, height: int) -> Matrix:
    return translate_x_matrix(pct * width, width, height)


def translate_y_rel_matrix(pct: float, width: int, height: int) -> Matrix:
    return translate_y_matrix(pct * height, width, height)
