"""Seeds: one for the whole run, and derived ones for per-step random streams."""
from __future__ import annotations

import random

import numpy as np
import paddle


def derived_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every part (run seed, rank, step, stream tag, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and Paddle (``seed: 0`` is a seed like any other)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)
