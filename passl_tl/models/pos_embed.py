"""Position embeddings for another token grid (fine-tuning at another image size).

As the official fine-tuning does: the positions of the prefix tokens (cls, and DeiT's distillation
token) are kept, the patch positions are reshaped to their grid (VOLO stores them as one) and resized
bicubically (``align_corners=False``, cubic coefficient a = -0.75).
"""
from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn.functional as F


def patch_grid(num_patches: int, like: tuple[int, int]) -> tuple[int, int] | None:
    """The (rows, cols) grid that ``num_patches`` positions came from: square if they can be,
    otherwise with the aspect ratio of the grid ``like``; None if neither fits."""
    side = math.isqrt(num_patches)
    if num_patches > 0 and side * side == num_patches:
        return side, side
    rows = round(math.sqrt(num_patches * like[0] / like[1]))
    if rows > 0 and num_patches % rows == 0 and rows * like[1] == (num_patches // rows) * like[0]:
        return rows, num_patches // rows
    return None


def resize_pos_embed(pos_embed: np.ndarray, old_grid: tuple[int, int], new_grid: tuple[int, int],
                     num_prefix_tokens: int = 1) -> np.ndarray:
    """``[1, p + h*w, D]`` → ``[1, p + H*W, D]`` in float32: the ``p`` prefix positions unchanged, the
    row-major patch positions resized from ``old_grid`` (h, w) to ``new_grid`` (H, W) bicubically."""
    pos_embed = pos_embed.astype(np.float32)
    cls_pos, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    resized = resize_pos_grid(patches.reshape(1, *old_grid, -1), new_grid)
    return np.concatenate([cls_pos, resized.reshape(1, new_grid[0] * new_grid[1], -1)], axis=1)


def resize_pos_grid(grid: np.ndarray, new_grid: tuple[int, int]) -> np.ndarray:
    """``[1, h, w, D]`` → ``[1, H, W, D]`` in float32, bicubically (VOLO keeps its positions as such a grid)."""
    channels_first = paddle.to_tensor(grid.astype(np.float32).transpose(0, 3, 1, 2))
    resized = F.interpolate(channels_first, size=list(new_grid), mode="bicubic", align_corners=False)
    return resized.numpy().transpose(0, 2, 3, 1)
