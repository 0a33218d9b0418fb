"""The per-epoch LR schedule against timm's cosine-with-warmup formula."""
import math

import pytest

from passl_tl.engine.lr_schedulers import CosineWarmup


def test_cosine_warmup_matches_timm_formula():
    s = CosineWarmup(base_lr=1.6e-3, epochs=300, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5, cooldown_epochs=10)
    assert s.total_epochs == 310
    assert s.lr_at(0) == pytest.approx(1e-6)  # warmup applies from the first epoch
    assert s.lr_at(1) == pytest.approx(1e-6 + (1.6e-3 - 1e-6) / 5)
    assert s.lr_at(5) == pytest.approx(1e-5 + 0.5 * (1.6e-3 - 1e-5) * (1 + math.cos(math.pi * 5 / 300)))
    assert s.lr_at(150) == pytest.approx(1e-5 + 0.5 * (1.6e-3 - 1e-5))
    assert s.lr_at(299) > s.lr_at(300) == s.lr_at(309) == 1e-5
