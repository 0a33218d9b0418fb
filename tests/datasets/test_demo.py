"""The synthetic demo dataset: layout, label format, labels describing the pictures, idempotence."""
import colorsys
import os

import cv2
import numpy as np
import pytest

from passl_tl.datasets.demo import class_name, class_style, make_demo_dataset, wnid
from passl_tl.datasets.imagenet_token_label import ImageNetTokenLabel

from tests.conftest import import_tool

PARAMS = dict(num_classes=5, train_per_class=3, val_per_class=2, image_size=72, seed=0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(str(tmp_path_factory.mktemp("demo")), **PARAMS)


def train_pairs(out):
    for k in range(PARAMS["num_classes"]):
        for n in range(PARAMS["train_per_class"]):
            stem = f"{wnid(k)}_{n:04d}"
            yield (k, os.path.join(out, "train", wnid(k), stem + ".JPEG"),
                   os.path.join(out, "label_top5_train", wnid(k), stem + ".npy"))


def test_layout(demo):
    assert sorted(os.listdir(demo)) == ["classes.txt", "demo.json", "label_top5_train", "train", "val"]
    wnids = [f"n0000000{k}" for k in range(5)]
    for split, count in (("train", 3), ("val", 2)):
        assert sorted(os.listdir(os.path.join(demo, split))) == wnids
        assert all(len(os.listdir(os.path.join(demo, split, w))) == count for w in wnids)
    val_names = sorted(os.listdir(os.path.join(demo, "val", "n00000001")))
    assert val_names == ["n00000001_0003.JPEG", "n00000001_0004.JPEG"]
    lines = open(os.path.join(demo, "classes.txt")).read().splitlines()
    assert [line.split()[0] for line in lines] == wnids and all(len(line.split()) == 2 for line in lines)
    img = cv2.imread(os.path.join(demo, "val", "n00000004", "n00000004_0003.JPEG"))
    assert img.shape == (72, 72, 3)


@pytest.mark.parametrize("num_classes", [5, 10, 12, 13, 25, 200, 1000])
def test_class_names_are_distinct(num_classes):
    """A prediction's name says which class it is: hue names and stripe angles repeat beyond 12 classes."""
    names = [class_name(k, num_classes) for k in range(num_classes)]
    assert len(set(names)) == num_classes


def test_label_files(demo):
    for k, _, label_path in train_pairs(demo):
        label = np.load(label_path)
        assert label.shape == (2, 5, 18, 18) and label.dtype == np.float16
        logits, ids = label.astype(np.float32)
        assert (np.diff(logits, axis=0) <= 0).all() and (logits[0] > logits[1]).all()
        assert (ids == np.round(ids)).all() and ids.min() >= 0 and ids.max() < 5
        assert (np.sort(ids, axis=0)[1:] != np.sort(ids, axis=0)[:-1]).all()  # distinct per cell
        top1 = ids[0].astype(int)
        assert np.bincount(top1.ravel(), minlength=5).argmax() == k  # ground truth = majority
        assert (top1 != k).any()  # at least one region of another class


def nearest_class_by_hue(rgb):
    hue = colorsys.rgb_to_hsv(*(np.asarray(rgb) / 255.0))[0]
    hues = np.array([colorsys.rgb_to_hsv(*(class_style(k, 5)[0] / 255.0))[0] for k in range(5)])
    distance = np.abs((hues - hue + 0.5) % 1.0 - 0.5)
    return int(distance.argmin())


def test_label_map_describes_the_image(demo):
    checked = agree = 0
    for _, image_path, label_path in train_pairs(demo):
        rgb = cv2.cvtColor(cv2.imread(image_path), cv2.COLOR_BGR2RGB).astype(np.float32)
        logits, ids = np.load(label_path).astype(np.float32)
        cells = rgb.reshape(18, 4, 18, 4, 3).mean(axis=(1, 3))  # 72 px = 18 cells of 4 px
        pure = logits[0] - logits[1] > 5  # cells covered by one class
        for r, c in zip(*np.nonzero(pure)):
            checked += 1
            agree += nearest_class_by_hue(cells[r, c]) == ids[0, r, c]
    assert checked > 0.8 * 15 * 18 * 18
    assert agree / checked > 0.97


def test_idempotent_and_deterministic(demo, tmp_path):
    _, image_path, label_path = next(train_pairs(demo))
    stamps = os.stat(image_path).st_mtime_ns, os.stat(label_path).st_mtime_ns
    assert make_demo_dataset(demo, **PARAMS) == demo
    assert (os.stat(image_path).st_mtime_ns, os.stat(label_path).st_mtime_ns) == stamps
    other = make_demo_dataset(str(tmp_path / "again"), **PARAMS)
    for _, image, label in train_pairs(other):
        assert open(image, "rb").read() == open(image.replace(other, demo), "rb").read()
        np.testing.assert_array_equal(np.load(label), np.load(label.replace(other, demo)))
    os.remove(label_path.replace(demo, other))
    make_demo_dataset(other, **PARAMS)  # incomplete: written again
    np.testing.assert_array_equal(np.load(label_path.replace(demo, other)), np.load(label_path))
    with pytest.raises(ValueError, match="made with"):
        make_demo_dataset(other, **{**PARAMS, "image_size": 64})


def test_dataset_reads_the_demo(demo):
    train = ImageNetTokenLabel(os.path.join(demo, "train"), os.path.join(demo, "label_top5_train"),
                               class_list=os.path.join(demo, "classes.txt"))
    val = ImageNetTokenLabel(os.path.join(demo, "val"))
    assert train.classes == val.classes and len(train) == 15 and len(val) == 10
    img, packed = train[4]
    assert img.shape == (3, 72, 72) and packed.shape == (3, 5, 18, 18) and packed[2, 0, 0, 5] == 1


def test_tool(tmp_path, capsys):
    import_tool("make_demo_data").main(["--out", str(tmp_path / "d"), "--num-classes", "5", "--train-per-class", "1",
               "--val-per-class", "1", "--image-size", "32"])
    assert "5 classes" in capsys.readouterr().out
    label = np.load(tmp_path / "d" / "label_top5_train" / "n00000002" / "n00000002_0000.npy")
    assert label.shape == (2, 5, 18, 18)
