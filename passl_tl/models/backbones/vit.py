"""The ViT skeleton the transformer families share, so that a family file holds only what its paper changes.

Prefix tokens, position embedding, blocks with a linear drop-path schedule, final norm and the official ViT
init live here, under the official parameter names (``cls_token``, ``pos_embed``, ``blocks.i``, ``norm``);
a family passes its patch embedding, extra tokens, position table and block options.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import numpy as np
import paddle
import paddle.nn as nn
from paddle import Tensor

from ...token_labels.mixtoken import mix_tokens
from ..classifier import patch_token_map
from ...utils.registry import PositiveInt
from ..layers import Block, freeze, init_vit_weights, trunc_normal_

ImageSize = Union[PositiveInt, tuple[PositiveInt, PositiveInt]]  # one side, or (height, width)


def image_size(img_size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of an ``img_size`` given as one side or as a pair."""
    return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)


class VisionTransformer(nn.Layer):
    """Patch tokens → [cls, extra tokens, patches] + ``pos_embed`` → dropout → blocks → norm.

    ``forward(x, mix_box)`` → all tokens ``[B, num_prefix_tokens + N, D]`` after the final norm;
    ``mix_box = (x1, y1, x2, y2)`` applies MixToken (``token_labels.mixtoken.mix_tokens``) on the
    ``grid_size`` patch grid before the prefix tokens and positions are added.

    ``img_size`` ``(height, width)`` is the input size the model is built for (``grid_size`` and
    ``pos_embed`` follow from it); data pipelines take their crop size from it.

    ``embedding`` is registered as ``embedding_name`` (a class attribute, the official name); by default
    it maps images to ``[B, D, rows, cols]`` (a family whose embedding gives tokens overrides
    ``patch_tokens``). ``extra_tokens`` names learned tokens after the cls token (DeiT's ``dist_token``).
    ``pos_table(num_positions, dim)`` gives a frozen position table; without it ``pos_embed`` is learned.
    ``norm_eps`` is every LayerNorm's; ``block_options`` go to every ``Block`` (``mlp_ratio``,
    ``qkv_bias``, ``head_dim``, ``skip_lam``, ``qk_scale``).
    """

    embedding_name = "patch_embed"

    def __init__(self, embedding: nn.Layer, img_size: Sequence[int], grid_size: Sequence[int], embed_dim: int,
                 depth: int, num_heads: int, *, drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_eps: float = 1e-5, extra_tokens: Sequence[str] = (),
                 pos_table: Callable[[int, int], np.ndarray] | None = None, **block_options: Any):
        super().__init__()
        self.embed_dim = embed_dim
        self.img_size = tuple(img_size)
        self.grid_size = tuple(grid_size)
        self.prefix_token_names = ("cls_token", *extra_tokens)
        self.num_prefix_tokens = len(self.prefix_token_names)
        self.add_sublayer(self.embedding_name, embedding)
        for name in self.prefix_token_names:
            setattr(self, name, self.create_parameter([1, 1, embed_dim]))
        num_positions = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        table = None if pos_table is None else nn.initializer.Assign(
            pos_table(num_positions, embed_dim)[None].astype(np.float32))
        self.pos_embed = self.create_parameter([1, num_positions, embed_dim], default_initializer=table)
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.LayerList([
            Block(embed_dim, num_heads, drop=drop_rate, attn_drop=attn_drop_rate, drop_path=float(rate),
                  norm_eps=norm_eps, **block_options)
            for rate in np.linspace(0.0, drop_path_rate, depth)])
        self.norm = nn.LayerNorm(embed_dim, epsilon=norm_eps)

        if pos_table is None:
            trunc_normal_(self.pos_embed, std=0.02)
        else:
            freeze(self.pos_embed)
        for token in self.prefix_tokens():
            trunc_normal_(token, std=0.02)
        for layer in self.sublayers():
            init_vit_weights(layer)

    def prefix_tokens(self) -> list[Tensor]:
        """The learned tokens in front of the patch tokens, in order: cls, then the extra ones."""
        return [getattr(self, name) for name in self.prefix_token_names]

    def no_weight_decay(self) -> set[str]:
        """The official ViTs' list: extra tokens are decayed (as DeiT's distillation token)."""
        return {"pos_embed", "cls_token"}

    def patch_tokens(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` → patch tokens ``[B, rows·cols, D]`` (row-major)."""
        return self.patch_embed(x).flatten(2).transpose([0, 2, 1])

    def forward(self, x: Tensor, mix_box: Sequence[int] | None = None) -> Tensor:
        patches = mix_tokens(self.patch_tokens(x), self.grid_size, mix_box)
        prefix = [token.expand([patches.shape[0], -1, -1]) for token in self.prefix_tokens()]
        x = self.pos_drop(paddle.concat([*prefix, patches], axis=1) + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def feature_map(self, x: Tensor) -> Tensor:
        """The patch tokens after the final norm as a ``[B, D, rows, cols]`` map."""
        return patch_token_map(self(x), self.grid_size)
