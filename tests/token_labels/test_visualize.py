"""tools/visualize_token_labels.py: the picture of a demo image's token labels, read back pixel by pixel."""
import os

import numpy as np
import pytest
from PIL import Image

from passl_tl.datasets.demo import make_demo_dataset, wnid
from passl_tl.deploy.class_names import imagenet_class_names
from passl_tl.engine.run_config import load_run_config
from passl_tl.token_labels.visualize import TITLE, class_colour, label_view, training_view
from passl_tl.utils.registry import ConfigError

from tests.conftest import DEMO_CONFIG, REPO_ROOT, import_tool

visualize_token_labels = import_tool("visualize_token_labels")  # tools/visualize_token_labels.py

NUM_CLASSES = 6


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = make_demo_dataset(str(tmp_path_factory.mktemp("demo")), num_classes=NUM_CLASSES, train_per_class=1,
                             val_per_class=0)
    stem = f"{wnid(2)}_0000"
    image = os.path.join(root, "train", wnid(2), stem + ".JPEG")
    label = os.path.join(root, "label_top5_train", wnid(2), stem + ".npy")
    return image, label, os.path.join(root, "classes.txt")


def cell_colours(png: np.ndarray, box, grid: tuple[int, int]) -> np.ndarray:
    """``[h, w, 3]``: the picture's colour at the centre of every cell of a class-map panel."""
    left, top, width, height = box
    rows = top + ((np.arange(grid[0]) + 0.5) * height / grid[0]).astype(int)
    cols = left + ((np.arange(grid[1]) + 0.5) * width / grid[1]).astype(int)
    return png[rows[:, None], cols[None, :]]


def expected_colours(ids: np.ndarray) -> np.ndarray:
    return np.array([class_colour(int(c)) for c in ids.ravel()], dtype=np.uint8).reshape(*ids.shape, 3)


def top1(label_path: str) -> np.ndarray:
    label = np.load(label_path).astype(np.float32)
    return label[1][label[0].argmax(axis=0), np.arange(18)[:, None], np.arange(18)[None, :]].astype(int)


def flip_seeds() -> tuple[int, int]:
    """A seed whose training view is flipped and one whose view is not."""
    flips = {seed: training_view(np.zeros((8, 8, 3), np.uint8), np.ones((2, 5, 6, 6), np.float32), seed,
                                 size=8, label_size=2).flipped for seed in range(20)}
    return next(s for s, f in flips.items() if f), next(s for s, f in flips.items() if not f)


def test_picture_of_the_full_label_map(demo, tmp_path):
    image, label, names = demo
    out = str(tmp_path / "labels.png")
    figure = visualize_token_labels.main([image, label, "--out", out, "--class-names", names])
    png = np.asarray(Image.open(out).convert("RGB"))
    assert png.shape[1] >= 3 * 224 and 224 < png.shape[0] < 1000
    assert set(figure.panels) == {"0/image", "0/classes", "0/confidence"}
    ids = top1(label)
    np.testing.assert_array_equal(cell_colours(png, figure.panels["0/classes"], ids.shape), expected_colours(ids))
    assert set(figure.legend) == set(np.unique(ids).tolist())
    # the image panel shows the image (a demo image is mostly its class's texture, not white)
    left, top, width, height = figure.panels["0/image"]
    assert png[top:top + height, left:left + width].mean() < 200
    for left, top, width, _ in figure.panels.values():  # each column's title: text just above its panel
        assert (png[top - TITLE:top, left:left + width] < 128).any()


def test_confidence_is_the_top_k_softmax(demo):
    image, label, _ = demo
    logits = np.load(label).astype(np.float32)
    view = label_view(np.zeros((4, 4, 3), np.uint8), logits, "")
    expected = 1.0 / np.exp(logits[0] - logits[0].max(axis=0)).sum(axis=0)
    np.testing.assert_allclose(view.confidence, expected, rtol=1e-6)
    assert (view.confidence > 0.2).all() and (view.confidence <= 1.0).all()


def test_training_view_follows_the_flip(demo, tmp_path):
    """A full-image crop pooled to the label map's own grid reproduces its top-1 classes: mirrored
    when the sampled view is flipped."""
    image, label, names = demo
    ids = top1(label)
    for seed, mirror in zip(flip_seeds(), (True, False)):
        out = str(tmp_path / f"crop{seed}.png")
        figure = visualize_token_labels.main([image, label, "--out", out, "--crop", "--seed", str(seed),
                                              "--label-size", "18", "--crop-scale", "1", "1", "--size", "64"])
        png = np.asarray(Image.open(out).convert("RGB"))
        assert {"1/image", "1/classes", "1/confidence"} <= set(figure.panels)
        crop_colours = cell_colours(png, figure.panels["1/classes"], ids.shape)
        np.testing.assert_array_equal(crop_colours, expected_colours(ids[:, ::-1] if mirror else ids))
        left, top, width, height = figure.panels["1/image"]
        full = figure.panels["0/image"]
        crop_image = png[top:top + height, left:left + width].astype(int)
        full_image = png[full[1]:full[1] + full[3], full[0]:full[0] + full[2]].astype(int)
        assert (np.abs(crop_image - full_image[:, ::-1]).mean() < np.abs(crop_image - full_image).mean()) == mirror


def test_errors(demo, tmp_path):
    image, label, _ = demo
    short = tmp_path / "names.txt"
    short.write_text("only_one\n")
    with pytest.raises(ValueError, match="class names"):
        visualize_token_labels.main([image, label, "--out", str(tmp_path / "x.png"), "--class-names", str(short)])
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 5, 18, 18), np.float16))
    with pytest.raises(ValueError, match="shape"):
        visualize_token_labels.main([image, str(bad), "--out", str(tmp_path / "y.png")])


def config(family, name):
    return os.path.join(REPO_ROOT, "configs", family, f"{name}.yaml")


@pytest.mark.parametrize("path, crop, label_size", [
    (DEMO_CONFIG, (64, [0.35, 1.0]), 8),  # LV-ViT with patch 8 at 64 px
    (config("regnet", "regnety_002_relabel_demo"), (64, [0.35, 1.0]), 1),  # ReLabel: one pooled label per crop
    (config("deit", "deit_small"), (224, [0.08, 1.0]), 14),  # no token labels: the grid they would take
])
def test_a_config_gives_the_training_view(path, crop, label_size):
    settings = visualize_token_labels.config_settings(path, [])
    assert (settings["size"], settings["crop_scale"], settings["label_size"]) == (*crop, label_size)
    assert visualize_token_labels.config_settings(path, ["model.img_size=128"])["size"] == 128


def test_the_config_gives_defaults_and_options_win(demo, tmp_path, monkeypatch):
    image, label, _ = demo
    seen, real = [], visualize_token_labels.visualize_token_labels
    monkeypatch.setattr(visualize_token_labels, "visualize_token_labels", lambda *args: seen.append(args) or real(*args))
    out = str(tmp_path / "v.png")
    visualize_token_labels.main([image, label, "--out", out, "--crop", "-c", DEMO_CONFIG])
    visualize_token_labels.main([image, label, "--out", out, "--crop", "-c", DEMO_CONFIG, "--label-size", "4",
                                 "--size", "32", "--crop-scale", "1", "1", "--class-names", "imagenet"])
    visualize_token_labels.main([image, label, "--out", out, "--crop"])
    demo_names = load_run_config(DEMO_CONFIG)["class_names"]
    assert [(names, size, label_size, scale) for _, _, names, _, _, size, label_size, scale in seen] == [
        (demo_names, 64, 8, [0.35, 1.0]), (imagenet_class_names(), 32, 4, [1.0, 1.0]), (None, 224, 14, (0.08, 1.0))]
    with pytest.raises(ConfigError, match="-o overrides a config: give it with -c CONFIG"):
        visualize_token_labels.main([image, label, "--out", out, "-o", "model.img_size=32"])
