"""The official PyTorch LV-ViT training step, timed for a side-by-side ratio (``tools/benchmark.py model
--official-repo``).

Runs as a script under an interpreter with PyTorch and timm (``--official-python``), never imports Paddle or
passl_tl, and imports the model and loss from a checkout of zihangJiang/TokenLabeling given at run time
(nothing of it is copied here). One timed step is what the official ``train_one_epoch`` does per batch on the
CPU: forward in train mode (MixToken box drawn by the model), ``TokenLabelCrossEntropy``, ``zero_grad``,
``backward``, the AdamW step of timm's ``create_optimizer_v2``. The dense target ``[B, classes, 2 + tokens]``
is built once before (the official loader builds it, with torchvision's ``roi_align``); our timed step builds
its targets every iteration, so the comparison is, if anything, tilted against us. The eval phase is the
official ``validate``'s forward: eval mode, ``no_grad``, the whole batch at once.

    python official_step.py SETTINGS_JSON OUT_JSON
"""
import importlib
import json
import os
import resource
import sys
import time

OFFICIAL_PRESETS = {"lvvit_tiny": "lvvit_t", "lvvit_small": "lvvit_s", "lvvit_medium": "lvvit_m",
                    "lvvit_large": "lvvit_l"}  # our preset: the official model function
PATCH = 16  # every official LV-ViT preset tokenises with stride 16


def main(settings: dict, out: str) -> None:
    import numpy as np
    import torch
    if not hasattr(np, "int"):  # the official MixToken box uses np.int, removed in NumPy 1.24
        np.int = int
    sys.path.insert(0, settings["official_repo"])
    from timm.optim import create_optimizer_v2
    from tlt.loss import TokenLabelCrossEntropy
    lvvit = importlib.import_module("tlt.models.lvvit")

    torch.set_num_threads(settings["threads"])
    torch.manual_seed(0)
    np.random.seed(0)  # the official MixToken draws its box with NumPy
    batch, size, classes = settings["batch_size"], settings["img_size"], settings["num_classes"]
    model = getattr(lvvit, OFFICIAL_PRESETS[settings["model"]])(num_classes=classes, img_size=size,
                                                                drop_path_rate=0.1)
    generator = np.random.default_rng(0)
    images = torch.from_numpy(generator.standard_normal((batch, 3, size, size), dtype=np.float32))
    if settings["phase"] == "train":
        model.train()
        optimizer = create_optimizer_v2(model, opt="adamw", lr=1.6e-3, weight_decay=0.05)
        loss_fn = TokenLabelCrossEntropy(dense_weight=1.0, cls_weight=1.0, classes=classes)
        target = torch.softmax(torch.from_numpy(generator.standard_normal(
            (batch, classes, 2 + (size // PATCH) ** 2), dtype=np.float32)), dim=1)

        def step() -> float:
            loss = loss_fn(model(images), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.item()
    else:
        model.eval()

        @torch.no_grad()
        def step() -> float:
            return float(model(images).sum())
    seconds, values = [], []
    for _ in range(settings["warmup"] + settings["repeats"]):
        start = time.perf_counter()
        values.append(step())
        seconds.append(time.perf_counter() - start)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"seconds": seconds, "losses" if settings["phase"] == "train" else "logit_sums": values,
                   "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "official_model": OFFICIAL_PRESETS[settings["model"]],
                   "parameters": sum(p.numel() for p in model.parameters()),
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                   "official_commit": _commit(settings["official_repo"])}, f)


def _commit(repo: str) -> str | None:
    head = os.path.join(repo, ".git", "HEAD")
    if not os.path.isfile(head):
        return None
    with open(head, encoding="utf-8") as f:
        ref = f.read().strip()
    if not ref.startswith("ref: "):
        return ref
    path = os.path.join(repo, ".git", ref[5:])
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    return None


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), sys.argv[2])
