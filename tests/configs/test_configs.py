"""The shipped LV-ViT configs state the official recipe (TokenLabeling main.py defaults + README
commands) and name registered components only."""
import os

import pytest

import passl_tl.datasets  # noqa: F401  (registers datasets and transforms)
import passl_tl.engine  # noqa: F401  (registers hooks, batch stages, optimizers, schedulers)
import passl_tl.models  # noqa: F401
from passl_tl.engine.run_config import load_run_config
from passl_tl.utils.registry import BATCH_TRANSFORMS, DATASETS, HOOKS, LR_SCHEDULERS, MODELS, OPTIMIZERS, TRANSFORMS

from tests.conftest import REPO_ROOT

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
    return load_run_config(os.path.join(REPO_ROOT, "configs", "lvvit", f"{name}.yaml"))


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_config_states_the_official_recipe(name):
    preset, size, drop_path, lr, min_lr, wd, batch, rand_aug, crop_pct = OFFICIAL[name]
    cfg = load(name)
    model, data, sched, hooks, stages = cfg["model"], cfg["data"], cfg["lr_scheduler"], cfg["hooks"], cfg["batch"]
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

    target = stages["target"]  # its token grid is the model's: size // 16 a side
    assert (target["name"], target["smoothing"], target.get("upsample_labels", False)) == \
        ("TokenLabelTargets", 0.1, size // 16 > 18)  # finer than the 18 x 18 NFNet maps: sampled finer
    assert (stages["mixtoken"]["name"], stages["mixtoken"]["alpha"]) == ("MixToken", 1.0)
    if size == 224:
        assert (hooks["ema"]["name"], hooks["ema"]["decay"]) == ("EMAHook", 0.99992)
    else:  # the official fine-tuning command has no --model-ema
        assert hooks["ema"] is None
    assert stages["mixup"] is None and stages["teacher"] is None  # the official LV-ViT recipe: no Mixup/CutMix


FINETUNE = sorted(name for name, recipe in OFFICIAL.items() if recipe[1] > 224)
# -o overrides the README gives for a short fine-tuning (VOLO's 30 + 10, DeiT's 30) -> epochs run
SHORT_FINETUNE = {"-o epochs=30": 40, "-o epochs=30 lr_scheduler.cooldown_epochs=0": 30}


@pytest.mark.parametrize("name", FINETUNE)
def test_finetune_configs_keep_the_literal_length_and_the_readme_shortens_it(name):
    """The official fine-tuning command passes no --epochs, so the configs keep its 300 + 10 epochs;
    the README's overrides give the stated shorter runs, at the same lr (5e-6 after the warmup)."""
    path = os.path.join(REPO_ROOT, "configs", "lvvit", f"{name}.yaml")
    readmes = [open(os.path.join(REPO_ROOT, f), encoding="utf-8").read() for f in ("README.md", "README_cn.md")]
    assert "-o epochs=30" in open(path).read()
    for override, total in {"-o": 310, **SHORT_FINETUNE}.items():
        assert override == "-o" or all(override in readme for readme in readmes)
        cfg = load_run_config(path, override.split()[1:])
        sched = LR_SCHEDULERS.build(cfg["lr_scheduler"], "test", base_lr=cfg["optimizer"]["lr"], epochs=cfg["epochs"])
        assert sched.total_epochs == total
        lrs = [sched.lr_at(epoch) for epoch in range(total)]
        assert lrs[:5] == pytest.approx([1e-6, 1.8e-6, 2.6e-6, 3.4e-6, 4.2e-6])
        assert lrs[5:] == pytest.approx([5e-6] * (total - 5))


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
    cfg = load_run_config(path, ["model.ground_truth=true", "model.dense_weight=0.5", "model.cls_weight=2.0"])
    head = build_model(cfg).head
    assert (head.ground_truth, head.dense_weight, head.cls_weight) == (True, 0.5, 2.0)


def load_family(family, name):
    return load_run_config(os.path.join(REPO_ROOT, "configs", family, f"{name}.yaml"))


TIMM_ORDER = ["RandomResizedCropWithCoords", "RandomHorizontalFlipWithLabel", "RandAugmentWithLabel", "Normalize",
              "RandomErasing"]
# config: (preset, lr, weight decay, batch per GPU, warmup, cooldown, crop interpolation, eval crop_pct)
OFFICIAL_PLAIN = {
    ("deit", "deit_tiny"): ("deit_tiny_patch16_224", 1e-3, 0.05, 128, 5, 0, "bicubic", 0.875),
    ("deit", "deit_small"): ("deit_small_patch16_224", 1e-3, 0.05, 128, 5, 0, "bicubic", 0.875),
    ("deit", "deit_base"): ("deit_base_patch16_224", 1e-3, 0.05, 128, 5, 0, "bicubic", 0.875),
    ("deit", "deit_tiny_distilled"): ("deit_tiny_distilled_patch16_224", 1e-3, 0.05, 128, 5, 0, "bicubic", 0.875),
    ("deit", "deit_small_distilled"): ("deit_small_distilled_patch16_224", 1e-3, 0.05, 128, 5, 0, "bicubic", 0.875),
    ("deit", "deit_base_distilled"): ("deit_base_distilled_patch16_224", 1e-3, 0.05, 128, 5, 0, "bicubic", 0.875),
    ("t2t_vit", "t2t_vit_7"): ("t2t_vit_7", 1e-3, 0.03, 64, 10, 10, "random", 0.9),
    ("t2t_vit", "t2t_vit_14"): ("t2t_vit_14", 5e-4, 0.05, 64, 10, 10, "random", 0.9),
    ("t2t_vit", "t2t_vit_24"): ("t2t_vit_24", 5e-4, 0.065, 64, 10, 10, "random", 0.9),
}


@pytest.mark.parametrize("family, name", sorted(OFFICIAL_PLAIN))
def test_deit_and_t2t_configs_state_their_official_recipes(family, name):
    preset, lr, wd, batch, warmup, cooldown, interpolation, crop_pct = OFFICIAL_PLAIN[(family, name)]
    cfg = load_family(family, name)
    model, data, sched, hooks, stages = cfg["model"], cfg["data"], cfg["lr_scheduler"], cfg["hooks"], cfg["batch"]
    assert (model["name"], model["num_classes"], model["drop_path_rate"]) == (preset, 1000, 0.1)
    assert (cfg["optimizer"]["lr"], cfg["optimizer"]["weight_decay"], data["batch_size"]) == (lr, wd, batch)
    assert (cfg["epochs"], sched["warmup_epochs"], sched["cooldown_epochs"]) == (300, warmup, cooldown)
    assert (sched["warmup_lr"], sched["min_lr"]) == (1e-6, 1e-5)
    assert data["repeated_augmentation"] == (3 if family == "deit" else 1)
    transforms = data["train"]["transforms"]
    assert [t["name"] for t in transforms] == TIMM_ORDER and "label_root" not in data["train"]
    assert transforms[0]["interpolation"] == interpolation and transforms[2]["config_str"] == "rand-m9-mstd0.5-inc1"
    assert transforms[4] == {"name": "RandomErasing", "prob": 0.25, "mode": "pixel", "max_count": 1}
    assert [transforms[0]["size"], transforms[2]["img_size"], data["val"]["transforms"][0]["size"]] == [224] * 3
    assert data["val"]["transforms"][0]["crop_pct"] == crop_pct
    assert stages["target"] == {"name": "SoftTargets", "smoothing": 0.1}
    mixup = stages["mixup"]
    assert (mixup["mixup_alpha"], mixup["cutmix_alpha"], mixup["prob"], mixup["switch_prob"]) == (0.8, 1.0, 1.0, 0.5)
    assert hooks["ema"]["decay"] == 0.99996 and stages["mixtoken"] is None
    # DeiT reports (and keeps as best) its raw model, T2T-ViT its EMA
    assert hooks["evaluate"].get("track", "ema") == ("model" if family == "deit" else "ema")
    if "distilled" in name:
        assert (model["distillation_type"], model["alpha"], model["tau"]) == ("hard", 0.5, 1.0)
        assert stages["teacher"]["teacher"] == {"name": "regnety_160", "num_classes": 1000}


@pytest.mark.parametrize("family, name", [("deit", "deit_small_token_label"), ("t2t_vit", "t2t_vit_14_token_label")])
def test_token_labeling_on_other_families(family, name):
    """DeiT-S and T2T-ViT-14 with the LV-ViT token-labeling recipe: token-label head, MixToken,
    NFNet-F6 labels at 14 x 14 (their patch tokens form a 14 x 14 grid at 224)."""
    import paddle

    from passl_tl import build_model
    cfg = load_family(family, name)
    assert cfg["data"]["train"]["label_root"] == "data/label_top5_train_nfnet"
    assert cfg["batch"]["target"]["name"] == "TokenLabelTargets" and cfg["batch"]["mixtoken"]["alpha"] == 1.0
    with paddle.LazyGuard():
        model = build_model(cfg)
    assert type(model.head).__name__ == "TokenLabelHead" and tuple(model.grid_size) == (14, 14)


ALL_CONFIGS = sorted(  # every shipped config (configs/<family>/<name>.yaml), _base_ files aside
    os.path.relpath(os.path.join(d, f), os.path.join(REPO_ROOT, "configs"))
    for d, _, files in os.walk(os.path.join(REPO_ROOT, "configs")) if "_base_" not in d
    for f in files if f.endswith(".yaml"))


@pytest.mark.parametrize("path", ALL_CONFIGS)
def test_every_config_names_registered_components(path):
    cfg = load_run_config(os.path.join(REPO_ROOT, "configs", path))
    model = cfg["model"]
    assert model["name"] in MODELS and cfg["optimizer"]["name"] in OPTIMIZERS
    assert cfg["lr_scheduler"]["name"] in LR_SCHEDULERS
    assert all(stage["name"] in BATCH_TRANSFORMS for stage in cfg["batch"].values() if stage)
    for split in ("train", "val"):
        assert cfg["data"][split]["name"] in DATASETS
        assert all(t["name"] in TRANSFORMS for t in cfg["data"][split]["transforms"])
    assert all(h["name"] in HOOKS for h in cfg["hooks"].values() if h)
    if cfg["batch"]["teacher"]:
        assert cfg["batch"]["teacher"]["teacher"]["name"] in MODELS


# VOLO (sail-sg/volo): main.py defaults and README commands; D4/D5 at 224 from the paper's training table; the
# D4/D5 fine-tunes take the paper's batch 512 and lr 5e-6, the rest as the D3 448 command (their YAML says which).
# config: (preset, img size, drop path, lr, min lr, weight decay, batch per GPU (x 8), warmup, epochs (+ 10
# cooldown), eval crop_pct (timm's per resolution), token-label grid, ground_truth)
VOLO = {
    "volo_d1": ("volo_d1", 224, 0.1, 1.6e-3, 1e-5, 0.05, 128, 20, 300, 0.96, 14, False),
    "volo_d2": ("volo_d2", 224, 0.2, 1.0e-3, 1e-5, 0.05, 128, 20, 300, 0.96, 14, False),
    "volo_d3": ("volo_d3", 224, 0.5, 1.0e-3, 1e-5, 0.05, 128, 20, 300, 0.96, 14, False),
    "volo_d4": ("volo_d4", 224, 0.5, 1.0e-3, 1e-5, 0.05, 128, 20, 300, 0.96, 14, False),
    "volo_d5": ("volo_d5", 224, 0.75, 8.0e-4, 1e-5, 0.05, 128, 20, 300, 0.96, 14, False),
    "volo_d1_384": ("volo_d1", 384, 0.1, 8e-6, 4e-6, 1e-8, 64, 5, 30, 1.0, 24, True),
    "volo_d2_384": ("volo_d2", 384, 0.2, 8e-6, 4e-6, 1e-8, 48, 5, 30, 1.0, 24, True),
    "volo_d3_448": ("volo_d3", 448, 0.5, 8e-6, 4e-6, 1e-8, 30, 5, 30, 1.0, 28, True),
    "volo_d4_448": ("volo_d4", 448, 0.5, 5e-6, 4e-6, 1e-8, 64, 5, 30, 1.15, 28, True),
    "volo_d5_448": ("volo_d5", 448, 0.75, 5e-6, 4e-6, 1e-8, 64, 5, 30, 1.15, 28, True),
    "volo_d5_512": ("volo_d5", 512, 0.75, 5e-6, 4e-6, 1e-8, 64, 5, 30, 1.15, 32, True),
}


def test_the_volo_table_covers_every_volo_config():
    """Every configs/volo/*.yaml is in the table above, and so among the configs whose components are checked."""
    assert sorted(f"volo/{name}.yaml" for name in VOLO) == [path for path in ALL_CONFIGS if path.startswith("volo/")]


@pytest.mark.parametrize("name", sorted(VOLO))
def test_volo_configs_state_the_official_recipe(name):
    preset, size, drop_path, lr, min_lr, wd, batch, warmup, epochs, crop_pct, grid, ground_truth = VOLO[name]
    cfg = load_family("volo", name)
    data, sched, hooks, stages = cfg["data"], cfg["lr_scheduler"], cfg["hooks"], cfg["batch"]
    assert cfg["model"] == {"name": preset, "num_classes": 1000, "img_size": size, "drop_path_rate": drop_path,
                            "dense_weight": 0.5, "cls_weight": 1.0, "ground_truth": ground_truth}
    assert (cfg["optimizer"]["name"], cfg["optimizer"]["lr"], cfg["optimizer"]["weight_decay"]) == ("AdamW", lr, wd)
    assert (sched["name"], sched["warmup_epochs"], sched["warmup_lr"], sched["min_lr"], sched["cooldown_epochs"]) == \
        ("CosineWarmup", warmup, 1e-6, min_lr, 10)
    assert (cfg["epochs"], cfg["seed"], cfg["output_dir"]) == (epochs, 42, f"output/{name}")
    assert (data["batch_size"], data["val_batch_size"]) == (batch, batch)  # main.py: validation batch = -b
    assert cfg["amp"]["enable"] and cfg["amp"]["dtype"] == "float16"  # --apex-amp

    assert data["train"]["label_root"] == "data/label_top5_train_nfnet"
    flip, rand_augment, crop, norm, erase = data["train"]["transforms"]  # tlt's token-label transforms
    assert flip == {"name": "RandomHorizontalFlipWithLabel", "prob": 0.5}
    assert rand_augment == {"name": "RandAugmentWithLabel", "config_str": RA2, "img_size": size,
                            "interpolation": "random"}
    assert crop["name"] == "RandomResizedCropWithCoords" and crop["size"] == size
    assert crop["scale"] == [0.08, 1.0] and crop["ratio"] == pytest.approx([3 / 4, 4 / 3])
    assert crop["interpolation"] == "random" and norm["name"] == "Normalize"
    assert erase == {"name": "RandomErasing", "prob": 0.25, "mode": "pixel", "max_count": 1}
    resize, _ = data["val"]["transforms"]
    assert resize == {"name": "ResizeCropPct", "size": size, "crop_pct": crop_pct, "interpolation": "bicubic"}

    target = stages["target"]  # on the model's token grid: img_size / 16 a side (--token-label-size)
    assert size // 16 == grid
    assert (target["name"], target["smoothing"], target.get("upsample_labels", False)) == \
        ("TokenLabelTargets", 0.1, grid > 18)  # finer than the 18 x 18 NFNet maps: sampled finer
    assert (stages["mixtoken"]["name"], stages["mixtoken"]["alpha"]) == ("MixToken", 1.0)
    assert stages["mixup"] is None and stages["teacher"] is None  # no Mixup/CutMix (they conflict with MixToken)
    assert hooks["ema"] is None  # no --model-ema in any README command
    assert hooks["evaluate"].get("track", "ema") == "ema"  # without an EMA the raw model is evaluated and kept


@pytest.mark.parametrize("name", sorted(VOLO))
def test_volo_schedules_add_the_cooldown_epochs(name):
    """timm's cosine scheduler runs its cooldown epochs after --epochs: 310 at 224, 40 for the fine-tunes'
    --epochs 30. Warmup from 1e-6, the cosine down to min_lr at ``epochs``, then min_lr to the end."""
    _, _, _, lr, min_lr, _, _, warmup, epochs, _, _, _ = VOLO[name]
    cfg = load_family("volo", name)
    sched = LR_SCHEDULERS.build(cfg["lr_scheduler"], "test", base_lr=cfg["optimizer"]["lr"], epochs=cfg["epochs"])
    assert sched.total_epochs == epochs + 10
    lrs = [sched.lr_at(epoch) for epoch in range(sched.total_epochs)]
    assert lrs[:warmup] == pytest.approx([1e-6 + t * (lr - 1e-6) / warmup for t in range(warmup)])
    assert all(a > b for a, b in zip(lrs[warmup:epochs], lrs[warmup + 1:epochs + 1]))
    assert max(lrs) == lrs[warmup] < lr and lrs[epochs:] == pytest.approx([min_lr] * 10)


@pytest.mark.parametrize("name", sorted(VOLO))
def test_volo_configs_build_their_models(name):
    """Each config builds its preset (shapes only): a 16-pixel token grid, the token-label head with the config's
    loss switches, and the parameter count its header states."""
    import math
    import re

    import paddle

    from passl_tl import build_model
    preset, size, *_, grid, ground_truth = VOLO[name]
    cfg = load_family("volo", name)
    with paddle.LazyGuard():
        model = build_model(cfg)
    assert tuple(model.grid_size) == (size // 16, size // 16) == (grid, grid)
    head = model.head
    assert type(head).__name__ == "TokenLabelHead" and model.num_classes == 1000
    assert (head.ground_truth, head.dense_weight, head.cls_weight) == (ground_truth, 0.5, 1.0)
    header = open(os.path.join(REPO_ROOT, "configs", "volo", f"{name}.yaml"), encoding="utf-8").readline()
    stated = float(re.search(r"([\d.]+)M parameters", header).group(1))
    assert round(sum(math.prod(p.shape) for p in model.parameters()) / 1e6, 2) == stated
