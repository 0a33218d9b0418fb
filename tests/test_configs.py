"""The shipped LV-ViT configs state the official recipe (TokenLabeling main.py defaults + README
commands) and name registered components only."""
import os

import pytest
from conftest import REPO_ROOT

import passl_tl.datasets  # noqa: F401  (registers datasets and transforms)
import passl_tl.engine  # noqa: F401  (registers hooks, optimizers, schedulers)
import passl_tl.models  # noqa: F401
from passl_tl.engine import DEFAULTS
from passl_tl.utils.config import load_config
from passl_tl.utils.registry import DATASETS, HOOKS, LR_SCHEDULERS, MODELS, OPTIMIZERS, TRANSFORMS

RA2, RA3 = "rand-m9-mstd0.5-inc1", "rand-n3-m9-mstd0.5-inc1"
# config: (preset, img size, drop path, lr, min lr, weight decay, batch per GPU, RandAugment, eval crop_pct)
OFFICIAL = {
    "lvvit_tiny": ("lvvit_tiny", 224, 0.1, 1.6e-3, 1e-5, 0.05, 128, RA2, 0.9),
    "lvvit_small": ("lvvit_small", 224, 0.1, 1.6e-3, 1e-5, 0.05, 128, RA2, 0.9),
    "lvvit_medium": ("lvvit_medium", 224, 0.2, 1.6e-3, 1e-5, 0.05, 128, RA2, 1.0),
    "lvvit_large": ("lvvit_large", 224, 0.3, 1.0e-3, 1e-5, 0.05, 128, RA3, 1.0),
    "lvvit_small_384": ("lvvit_small", 384, 0.1, 5e-6, 5e-6, 1e-8, 64, RA2, 0.9),
    "lvvit_medium_384": ("lvvit_medium", 384, 0.2, 5e-6, 5e-6, 1e-8, 64, RA2, 1.0),
    "lvvit_medium_448": ("lvvit_medium", 448, 0.2, 5e-6, 5e-6, 1e-8, 64, RA2, 1.0),
    "lvvit_large_448": ("lvvit_large", 448, 0.3, 5e-6, 5e-6, 1e-8, 64, RA3, 1.0),
}


def load(name):
    return load_config(os.path.join(REPO_ROOT, "configs", "lvvit", f"{name}.yaml"), [], DEFAULTS)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_config_states_the_official_recipe(name):
    preset, size, drop_path, lr, min_lr, wd, batch, rand_aug, crop_pct = OFFICIAL[name]
    cfg = load(name)
    model, data, sched, hooks = cfg["model"], cfg["data"], cfg["lr_scheduler"], cfg["hooks"]
    assert (model["name"], model["img_size"], model["drop_path_rate"], model["num_classes"]) == \
        (preset, size, drop_path, 1000)
    assert (model["dense_weight"], model["cls_weight"], model["ground_truth"]) == (1.0, 1.0, False)
    assert (cfg["optimizer"]["name"], cfg["optimizer"]["lr"], cfg["optimizer"]["weight_decay"]) == ("AdamW", lr, wd)
    assert (sched["name"], sched["warmup_epochs"], sched["warmup_lr"], sched["min_lr"]) == \
        ("CosineWarmup", 5, 1e-6, min_lr)
    assert (cfg["epochs"], sched["cooldown_epochs"]) == (300, 10)
    assert data["batch_size"] == batch  # per GPU, 8 GPUs
    assert cfg["amp"]["enable"] and cfg["amp"]["dtype"] == "float16"

    flip, rand_augment, crop, norm, erase = data["train"]["transforms"]
    assert flip == {"name": "RandomHorizontalFlipWithLabel", "prob": 0.5}
    assert rand_augment == {"name": "RandAugmentWithLabel", "config_str": rand_aug, "img_size": size,
                            "interpolation": "random"}
    assert crop["name"] == "RandomResizedCropWithCoords" and crop["size"] == size
    assert crop["scale"] == [0.08, 1.0] and crop["ratio"] == pytest.approx([3 / 4, 4 / 3])
    assert crop["interpolation"] == "random"
    assert norm["name"] == "Normalize" and norm["mean"] == [0.485, 0.456, 0.406]
    assert erase == {"name": "RandomErasing", "prob": 0.25, "mode": "pixel", "max_count": 1}
    resize, _ = data["val"]["transforms"]
    assert resize == {"name": "ResizeCropPct", "size": size, "crop_pct": crop_pct, "interpolation": "bicubic"}

    target = data["target"]
    assert (target["name"], target["label_size"], target["smoothing"]) == ("TokenLabelTargets", size // 16, 0.1)
    assert (hooks["mixtoken"]["name"], hooks["mixtoken"]["alpha"]) == ("MixTokenHook", 1.0)
    if size == 224:
        assert (hooks["ema"]["name"], hooks["ema"]["decay"]) == ("EMAHook", 0.99992)
    else:  # the official fine-tuning command has no --model-ema
        assert hooks["ema"] is None
    assert "mixup" not in hooks  # the official LV-ViT recipe uses no Mixup/CutMix


@pytest.mark.parametrize("name", sorted(OFFICIAL) + ["lvvit_demo"])
def test_config_names_registered_components(name):
    cfg = load(name)
    assert cfg["model"]["name"] in MODELS and cfg["optimizer"]["name"] in OPTIMIZERS
    assert cfg["lr_scheduler"]["name"] in LR_SCHEDULERS and cfg["data"]["target"]["name"] in TRANSFORMS
    for split in ("train", "val"):
        assert cfg["data"][split]["name"] in DATASETS
        assert all(t["name"] in TRANSFORMS for t in cfg["data"][split]["transforms"])
    assert all(h["name"] in HOOKS for h in cfg["hooks"].values() if h)


def test_small_config_builds_its_model_and_transforms():
    from passl_tl import build_model
    from passl_tl.datasets.imagenet_token_label import build_transforms
    cfg = load("lvvit_small_384")
    model = build_model(cfg)
    assert model.grid_size == (24, 24)
    assert len(build_transforms(cfg["data"]["train"]["transforms"], "test")) == 5


def test_loss_switches_reach_the_head():
    """The ground-truth correction and the loss weights are config switches of the model."""
    from passl_tl import build_model
    path = os.path.join(REPO_ROOT, "configs", "lvvit", "lvvit_demo.yaml")
    cfg = load_config(path, ["model.ground_truth=true", "model.dense_weight=0.5", "model.cls_weight=2.0"], DEFAULTS)
    head = build_model(cfg).head
    assert (head.ground_truth, head.dense_weight, head.cls_weight) == (True, 0.5, 2.0)
