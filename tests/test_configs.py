"""The shipped LV-ViT configs resolve to the official recipe and name registered components."""
import os

import pytest
from conftest import REPO_ROOT

from passl_tl.engine import DEFAULTS
from passl_tl.utils.config import load_config
from passl_tl.utils.registry import DATASETS, HOOKS, LR_SCHEDULERS, MODELS, OPTIMIZERS, TRANSFORMS

import passl_tl.datasets  # noqa: F401  (registers datasets and transforms)
import passl_tl.models  # noqa: F401

RECIPE = {  # preset, drop path, lr, eval crop_pct
    "lvvit_tiny": ("lvvit_tiny", 0.1, 1.6e-3, 0.9),
    "lvvit_small": ("lvvit_small", 0.1, 1.6e-3, 0.9),
    "lvvit_medium": ("lvvit_medium", 0.2, 1.6e-3, 1.0),
    "lvvit_large": ("lvvit_large", 0.3, 1.0e-3, 1.0),
}


@pytest.mark.parametrize("name", sorted(RECIPE))
def test_lvvit_config_matches_official_recipe(name):
    cfg = load_config(os.path.join(REPO_ROOT, "configs", "lvvit", f"{name}.yaml"), [], DEFAULTS)
    preset, drop_path, lr, crop_pct = RECIPE[name]
    assert cfg["model"]["name"] == preset and cfg["model"]["drop_path_rate"] == drop_path
    assert cfg["model"]["num_classes"] == 1000 and cfg["model"]["img_size"] == 224
    assert cfg["data"]["batch_size"] * 8 == 1024 and cfg["optimizer"]["lr"] == lr
    assert cfg["optimizer"]["weight_decay"] == 0.05
    assert cfg["epochs"] == 300 and cfg["lr_scheduler"]["cooldown_epochs"] == 10
    sched = cfg["lr_scheduler"]
    assert (sched["warmup_epochs"], sched["warmup_lr"], sched["min_lr"]) == (5, 1e-6, 1e-5)
    assert cfg["data"]["target"]["label_size"] == 14 and cfg["data"]["target"]["smoothing"] == 0.1
    assert cfg["hooks"]["ema"]["decay"] == 0.99992 and cfg["hooks"]["mixtoken"]["alpha"] == 1.0
    val_crop = cfg["data"]["val"]["transforms"][0]
    assert val_crop["name"] == "ResizeCropPct" and val_crop["crop_pct"] == crop_pct
    # every component the config names is registered
    assert preset in MODELS and cfg["optimizer"]["name"] in OPTIMIZERS
    assert cfg["lr_scheduler"]["name"] in LR_SCHEDULERS and cfg["data"]["target"]["name"] in TRANSFORMS
    for split in ("train", "val"):
        assert cfg["data"][split]["name"] in DATASETS
        assert all(t["name"] in TRANSFORMS for t in cfg["data"][split]["transforms"])
    assert all(h["name"] in HOOKS for h in cfg["hooks"].values())
