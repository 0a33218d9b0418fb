"""ImageNetTokenLabel on real image and label files written to a temporary directory."""
import logging
import os

import cv2
import numpy as np
import paddle
import pytest

from passl_tl.datasets.imagenet_token_label import ImageNetTokenLabel
from passl_tl.token_labels.targets import make_token_targets
from passl_tl.utils.registry import DATASETS, ConfigError
from tests.conftest import AUGMENT, WNIDS, write_split

@pytest.fixture()
def split(tmp_path):
    root, label_root = str(tmp_path / "train"), str(tmp_path / "labels")
    labels = write_split(root, label_root)
    return root, label_root, labels


def test_imagenet_layout_samples_images_and_labels(split):
    root, label_root, labels = split
    ds = ImageNetTokenLabel(root, label_root)
    assert ds.classes == sorted(WNIDS) and ds.num_classes == 3 and len(ds) == 9
    assert ds.samples[0] == (os.path.join(root, "n01000000", "n01000000_0.png"), 0)
    assert [c for _, c in ds.samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    img, packed = ds[4]  # n02000000_1: green left half, grey 40 right half
    assert img.shape == (3, 24, 32) and img.dtype == np.float32
    np.testing.assert_array_equal(img[:, 0, 0], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(img[:, 0, 31], 40 / 255, rtol=1e-6)
    assert packed.shape == (3, 3, 9, 9) and packed.dtype == np.float32
    np.testing.assert_array_equal(packed[:2], labels["n02000000/n02000000_1.png"].astype(np.float32))
    np.testing.assert_array_equal(packed[2, 0, 0, :6], [0, 0, 1, 1, 0, 1])


def test_list_file_gives_identical_samples(split, tmp_path):
    root, label_root, _ = split
    folder = ImageNetTokenLabel(root, label_root, transforms=AUGMENT)
    list_file = tmp_path / "train_list.txt"
    list_file.write_text("".join(f"{os.path.relpath(p, root)} {c}\n" for p, c in folder.samples))
    listed = ImageNetTokenLabel(root, label_root, transforms=AUGMENT, list_file=str(list_file))
    assert listed.samples == folder.samples and listed.classes == folder.classes
    for i in (0, 5, 8):
        for a, b in zip(listed[i], folder[i]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_label_dtypes(tmp_path, dtype):
    root, label_root = str(tmp_path / "train"), str(tmp_path / "labels")
    labels = write_split(root, label_root, label_dtype=dtype)
    _, packed = ImageNetTokenLabel(root, label_root)[0]
    np.testing.assert_array_equal(packed[:2], labels["n01000000/n01000000_0.png"].astype(np.float32))


def test_missing_label_is_an_error_naming_the_image(split):
    root, label_root, _ = split
    expected = os.path.join(label_root, "n02000000", "n02000000_2.npy")
    os.remove(expected)
    with pytest.raises(FileNotFoundError) as err:
        ImageNetTokenLabel(root, label_root)
    assert os.path.join(root, "n02000000", "n02000000_2.png") in str(err.value)
    assert expected in str(err.value)


def test_missing_label_ground_truth_fallback(split, caplog):
    root, label_root, _ = split
    os.remove(os.path.join(label_root, "n03000000", "n03000000_1.npy"))
    with caplog.at_level(logging.WARNING):
        ds = ImageNetTokenLabel(root, label_root, missing_label="ground_truth")
    assert ds.num_missing_labels == 1 and ds.missing_labels == {7}
    assert "1 of 9 images" in caplog.text
    _, packed = ds[7]
    assert (packed[1, 0] == 2).all() and len(np.unique(packed[1, :, 0, 0])) == 3
    targets = make_token_targets(packed[None], ds.num_classes, smoothing=0.1).numpy()
    off = 0.1 / 3
    expected = np.full((3, 1), off)
    expected[2] += 0.9 + off  # softmax ~ one-hot of the ground truth: on + off = 0.9 + 2 * off
    np.testing.assert_allclose(targets[0, :, 1:], expected.repeat(197, 1), atol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((2, 5, 9), np.float16), np.zeros((2, 5, 9, 9), np.float64),
                                 np.zeros((2, 5, 9, 9, 1), np.float16)])
def test_bad_label_file_is_an_error_naming_it(split, bad):
    root, label_root, _ = split
    path = os.path.join(label_root, "n01000000", "n01000000_2.npy")
    np.save(path, bad)
    with pytest.raises(ValueError, match="n01000000_2.npy"):
        ImageNetTokenLabel(root, label_root)[2]


def test_label_of_another_shape_is_an_error(split):
    root, label_root, _ = split
    path = os.path.join(label_root, "n03000000", "n03000000_0.npy")
    np.save(path, np.zeros((2, 5, 8, 8), np.float16))
    ds = ImageNetTokenLabel(root, label_root)
    with pytest.raises(ValueError, match=r"n03000000_0.npy has shape \[2, 5, 8, 8\]"):
        ds[6]


def test_augmentation_depends_on_seed_epoch_and_index_only(split):
    root, label_root, _ = split
    ds = DATASETS.build({"name": "ImageNetTokenLabel", "root": root, "label_root": label_root,
                         "transforms": AUGMENT, "seed": 7})
    first = [ds[i] for i in range(len(ds))]
    again = ImageNetTokenLabel(root, label_root, transforms=AUGMENT, seed=7)
    for i in reversed(range(len(ds))):  # another access order (as with other workers)
        np.testing.assert_array_equal(again[i][0], first[i][0])
        np.testing.assert_array_equal(again[i][1], first[i][1])
    crops = {tuple(lab[2, 0, 0, :4]) for _, lab in first}
    assert len(crops) == len(ds)  # every index draws its own crop
    ds.set_epoch(1)
    assert all(not np.array_equal(ds[i][1], first[i][1]) for i in range(len(ds)))
    ds.set_epoch(0)
    np.testing.assert_array_equal(ds[3][1], first[3][1])
    other_seed = ImageNetTokenLabel(root, label_root, transforms=AUGMENT, seed=8)
    assert not np.array_equal(other_seed[3][1], first[3][1])


def test_validation_split_with_class_list(tmp_path, split):
    root, _, _ = split
    val = str(tmp_path / "val")
    write_split(val, wnids=("n03000000",))
    class_list = tmp_path / "classes.txt"
    class_list.write_text("n01000000 red thing\nn02000000 green thing\nn03000000 blue thing\n")
    ds = ImageNetTokenLabel(val, class_list=str(class_list),
                            transforms=[{"name": "ResizeCropPct", "size": 16, "crop_pct": 0.875},
                                        {"name": "Normalize"}])
    assert ds.classes == ImageNetTokenLabel(root).classes
    img, target = ds[0]
    assert img.shape == (3, 16, 16) and target.dtype == np.int64 and target == 2
    assert ImageNetTokenLabel(val).classes == ["n03000000"]


def test_loader_batches_feed_the_target_builder(split):
    root, label_root, _ = split
    ds = ImageNetTokenLabel(root, label_root, transforms=AUGMENT)
    images, labels = next(iter(paddle.io.DataLoader(ds, batch_size=4, shuffle=False)))
    assert images.shape == [4, 3, 16, 16] and labels.shape == [4, 3, 3, 9, 9]
    targets = make_token_targets(labels, num_classes=3, label_size=4)
    assert targets.shape == [4, 3, 18]
    np.testing.assert_array_equal(targets.numpy()[:, :, 0].argmax(1), [0, 0, 0, 1])


def test_errors(tmp_path, split):
    root, label_root, _ = split
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageNetTokenLabel(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    (empty / "n01000000").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=str(empty)):
        ImageNetTokenLabel(str(empty))
    with pytest.raises(FileNotFoundError, match="label_root"):
        ImageNetTokenLabel(root, str(tmp_path / "no_labels"))
    with pytest.raises(ConfigError, match="ImageNetTokenLabel"):
        ImageNetTokenLabel(root, transforms=[{"name": "Normalize", "meen": [0, 0, 0]}])
    with pytest.raises(ConfigError, match="missing_label"):
        ImageNetTokenLabel(root, missing_label="skip")
    class_list = tmp_path / "two.txt"
    class_list.write_text("n01000000\nn02000000\n")
    with pytest.raises(ValueError, match="n03000000"):
        ImageNetTokenLabel(root, class_list=str(class_list))
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text("n01000000/n01000000_0.png zero\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        ImageNetTokenLabel(root, list_file=str(bad_list))
    broken = os.path.join(root, "n01000000", "n01000000_1.png")
    with open(broken, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(ValueError, match="n01000000_1.png"):
        ImageNetTokenLabel(root)[1]


def test_hidden_and_imageless_folders_are_not_classes(split):
    root, label_root, _ = split
    os.makedirs(os.path.join(root, ".ipynb_checkpoints"))
    os.makedirs(os.path.join(root, "lost+found"))
    cv2.imwrite(os.path.join(root, ".ipynb_checkpoints", "x.png"), np.zeros((4, 4, 3), np.uint8))
    ds = ImageNetTokenLabel(root, label_root)
    assert ds.classes == sorted(WNIDS)


def test_label_ids_outside_num_classes_are_an_error_naming_the_file(split):
    root, label_root, labels = split
    bad = labels["n01000000/n01000000_0.png"].copy()
    bad[1, 0, 0, 0] = 7  # 3 classes only
    path = os.path.join(label_root, "n01000000", "n01000000_0.npy")
    np.save(path, bad)
    ds = ImageNetTokenLabel(root, label_root)
    with pytest.raises(ValueError, match=path + r".*class ids span \[0, 7\]"):
        ds[0]


def test_exif_orientation_is_ignored_like_pil(tmp_path):
    """timm and the label annotator decode with PIL, which does not apply EXIF rotation."""
    from PIL import Image
    root = tmp_path / "val" / "n01000000"
    root.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" orientation tag
    Image.new("RGB", (20, 10), (200, 30, 30)).save(root / "a.jpg", exif=exif.tobytes())
    img, _ = ImageNetTokenLabel(str(tmp_path / "val"))[0]
    assert img.shape == (3, 10, 20)
