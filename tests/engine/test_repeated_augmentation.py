"""DeiT's repeated augmentation through the real sampler and DataLoader: each copy of an image is augmented
on its own, reproducibly, whatever the worker count, and a resumed epoch gives the remaining batches."""
import os

import numpy as np
import paddle
import pytest

from passl_tl.datasets.demo import make_demo_dataset
from passl_tl.datasets.imagenet_token_label import ImageNetTokenLabel
from passl_tl.engine.data import build_dataset, build_loader

REPEATS = 3
CLASSES, PER_CLASS = 5, 4
NUM_IMAGES = CLASSES * PER_CLASS
DEIT_AUGMENT = [  # the DeiT recipe (configs/deit/_base_/deit_imagenet.yaml) at 32 px
    {"name": "RandomResizedCropWithCoords", "size": 32, "scale": [0.08, 1.0], "interpolation": "bicubic"},
    {"name": "RandomHorizontalFlipWithLabel", "prob": 0.5},
    {"name": "RandAugmentWithLabel", "config_str": "rand-m9-mstd0.5-inc1", "img_size": 32,
     "interpolation": "bicubic"},
    {"name": "Normalize"},
    {"name": "RandomErasing", "prob": 0.25, "mode": "pixel", "max_count": 1},
]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> str:
    return make_demo_dataset(str(tmp_path_factory.mktemp("demo")), num_classes=CLASSES, train_per_class=PER_CLASS,
                             val_per_class=1, image_size=32)


def train_set(root: str) -> ImageNetTokenLabel:
    """The demo's training images as DeiT reads ImageNet: class labels, no token labels."""
    cfg = {"name": "ImageNetTokenLabel", "root": os.path.join(root, "train"), "transforms": DEIT_AUGMENT}
    return build_dataset(cfg, "data.train", seed=5)


def rank_loader(monkeypatch, root: str, world: int, rank: int, num_workers: int = 0) -> paddle.io.DataLoader:
    """The training loader of process ``rank`` of ``world`` (as ``paddle.distributed.launch`` sets them)."""
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", str(world))
    monkeypatch.setenv("PADDLE_TRAINER_ID", str(rank))
    return build_loader(train_set(root), batch_size=2, num_workers=num_workers, train=True, seed=5, repeats=REPEATS)


def run(loader, epochs: int = 2, resume_iter: int = 0) -> list[tuple[list, np.ndarray, np.ndarray]]:
    """(sampler items, images, classes) of every batch; the last epoch starts at ``resume_iter``."""
    out = []
    for epoch in range(epochs):
        loader.dataset.set_epoch(epoch)
        loader.batch_sampler.set_epoch(epoch)
        start = resume_iter if epoch == epochs - 1 else 0
        items = list(loader.batch_sampler)[start:]
        loader.batch_sampler.set_start_iter(start)
        batches = [(images.numpy(), targets.numpy()) for images, targets in loader]
        assert len(batches) == len(items)
        out += [(batch, images, targets) for batch, (images, targets) in zip(items, batches)]
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_copies_of_an_image_are_augmented_independently(monkeypatch, demo_root, world):
    samples = {}  # (index, copy) -> (image, class), over all processes of epoch 0
    for rank in range(world):
        for batch, images, targets in run(rank_loader(monkeypatch, demo_root, world, rank), epochs=1):
            samples.update({item: (img, target) for item, img, target in zip(batch, images, targets)})
    assert len(samples) == world * (NUM_IMAGES // world)  # every kept position is its own (index, copy)
    complete = [i for i in range(NUM_IMAGES) if all((i, c) in samples for c in range(REPEATS))]
    assert len(complete) >= 3
    plain = train_set(demo_root)
    for index in complete:
        copies = [samples[index, c] for c in range(REPEATS)]
        assert {int(target) for _, target in copies} == {plain.samples[index][1]}  # one image, its class
        for a in range(REPEATS):
            for b in range(a + 1, REPEATS):
                assert not np.array_equal(copies[a][0], copies[b][0]), (index, a, b)
        np.testing.assert_array_equal(copies[0][0], plain[index][0])  # copy 0 is the plain index's sample


def test_copies_are_reproducible_worker_independent_and_resumable(monkeypatch, demo_root):
    first = run(rank_loader(monkeypatch, demo_root, world=2, rank=1))
    assert len(first) == 2 * 5 and {c for batch, _, _ in first for _, c in batch} == set(range(REPEATS))
    for other in (run(rank_loader(monkeypatch, demo_root, world=2, rank=1)),
                  run(rank_loader(monkeypatch, demo_root, world=2, rank=1, num_workers=2))):
        assert len(other) == len(first)
        for (items, images, targets), (items_o, images_o, targets_o) in zip(first, other):
            assert items_o == items
            np.testing.assert_array_equal(images_o, images)
            np.testing.assert_array_equal(targets_o, targets)
    resumed = run(rank_loader(monkeypatch, demo_root, world=2, rank=1, num_workers=2), resume_iter=2)
    assert len(resumed) == 5 + 3
    for (items, images, targets), (items_r, images_r, targets_r) in zip(first[:5] + first[7:], resumed):
        assert items_r == items
        np.testing.assert_array_equal(images_r, images)
        np.testing.assert_array_equal(targets_r, targets)
