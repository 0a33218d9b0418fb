"""Bad inputs: image kinds decoded like Pillow, broken images and token labels (error or replace), the report."""
import io
import logging
import os
import re

import cv2
import numpy as np
import pytest
from PIL import Image  # installed with visualdl

from passl_tl.datasets.faults import REPORT_FILES, FaultLog, read_fault_report
from passl_tl.datasets.image_folder import BadImageError, read_rgb
from passl_tl.datasets.imagenet_token_label import ImageNetTokenLabel, fallback_label_map
from passl_tl.engine.data import build_loader
from passl_tl.token_labels.files import BadLabelError, check_label_map
from passl_tl.token_labels.pack import plan_pack, write_pack

from tests.conftest import AUGMENT, DEMO_CONFIG, WNIDS, small_run_overrides, train, write_split

RS = np.random.RandomState(0)
RGB = RS.randint(0, 256, (20, 30, 3), np.uint8)
ALPHA = RS.randint(0, 256, (20, 30), np.uint8)


@pytest.fixture(autouse=True)
def propagate_warnings(monkeypatch):
    """Let dataset warnings reach ``caplog`` even after a run's ``setup_logger`` stopped their propagation."""
    monkeypatch.setattr(logging.getLogger("passl_tl"), "propagate", True)


def pillow_rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def without_adobe_marker(jpeg: bytes) -> bytes:
    """The JPEG without its APP14 "Adobe" segment: CMYK then reads as plain, not inverted, CMYK."""
    i = 2
    while jpeg[i + 1] != 0xEE:
        i += 2 + int.from_bytes(jpeg[i + 2:i + 4], "big")
    return jpeg[:i] + jpeg[i + 2 + int.from_bytes(jpeg[i + 2:i + 4], "big"):]


# --- image kinds: decoded to what Pillow's convert("RGB") gives ------------------------------------------------

def test_grayscale_jpeg_gives_three_equal_channels(tmp_path):
    path = str(tmp_path / "gray.jpg")
    cv2.imwrite(path, RGB[..., 0])
    img = read_rgb(path)
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()
    np.testing.assert_array_equal(img, pillow_rgb(path))


@pytest.mark.parametrize("adobe", [True, False])
def test_cmyk_jpeg_converts_like_pillow(tmp_path, adobe):
    """Pillow writes Adobe-inverted CMYK; without the Adobe marker both decoders read plain CMYK. OpenCV
    computes (255 - C)(255 - K) / 255 with a shift by 8, so it stays within 2 of Pillow, never farther."""
    cmyk = cv2.resize(RS.randint(0, 256, (4, 6, 4), np.uint8), (30, 20), interpolation=cv2.INTER_NEAREST)
    buf = io.BytesIO()
    Image.fromarray(cmyk, "CMYK").save(buf, "JPEG", quality=100)
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(buf.getvalue() if adobe else without_adobe_marker(buf.getvalue()))
    with Image.open(path) as im:
        assert im.mode == "CMYK" and ("adobe" in im.info) == adobe
    img, ref = read_rgb(str(path)).astype(int), pillow_rgb(path).astype(int)
    assert np.abs(img - ref).max() <= 2 and np.abs(img - ref).mean() < 1.5
    assert np.abs(img - (255 - ref)).mean() > 50  # not inverted


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_alpha_png_ignores_alpha_like_pillow(tmp_path, mode):
    """Alpha is dropped, not composited: the colour channels as they are (Pillow's convert("RGB"))."""
    path = str(tmp_path / "alpha.png")
    if mode == "RGBA":
        Image.fromarray(np.dstack([RGB, ALPHA])).save(path)
        expected = RGB
    elif mode == "LA":
        Image.fromarray(np.dstack([RGB[..., 0], ALPHA]), "LA").save(path)
        expected = np.repeat(RGB[..., :1], 3, axis=2)
    else:  # palette with a transparent entry
        palette = RS.randint(0, 256, (16, 3), np.uint8)
        indices = RGB[..., 0] % 16
        im = Image.fromarray(indices, "P")
        im.putpalette(palette.ravel().tolist())
        im.save(path, transparency=3)
        expected = palette[indices]
    img = read_rgb(path)
    np.testing.assert_array_equal(img, expected)
    np.testing.assert_array_equal(img, pillow_rgb(path))


@pytest.mark.parametrize("channels", [3, 1])
def test_16_bit_png_keeps_the_high_byte(tmp_path, channels):
    """Pillow reads 16-bit RGB the same way but clips 16-bit grayscale at 255: the reference is numpy's."""
    wide = RS.randint(0, 65536, (20, 30, channels)).astype(np.uint16)
    path = str(tmp_path / "deep.png")
    cv2.imwrite(path, wide[..., ::-1] if channels == 3 else wide[..., 0])
    img = read_rgb(path)
    assert img.dtype == np.uint8
    np.testing.assert_array_equal(img, np.broadcast_to(wide >> 8, (20, 30, 3)))
    if channels == 3:
        np.testing.assert_array_equal(img, pillow_rgb(path))


# --- broken images: an error naming file and reason, or skipped ----------------------------------------------

def break_image(path: str, fault: str) -> str:
    """Break the image at ``path``; returns the expected reason."""
    if fault == "corrupt":
        with open(path, "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    elif fault == "truncated":
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[:len(data) * 2 // 3])
    elif fault == "empty":
        open(path, "wb").close()
    else:  # unreadable: a directory where the file was
        os.remove(path)
        os.mkdir(path)
    return {"empty": "empty file", "unreadable": "unreadable"}.get(fault, "OpenCV cannot decode")


@pytest.mark.parametrize("fault", ["corrupt", "truncated", "empty", "unreadable"])
def test_bad_image_is_an_error_naming_file_and_reason(tmp_path, fault):
    root = str(tmp_path / "train")
    write_split(root)
    ds = ImageNetTokenLabel(root)
    path = ds.samples[4][0]
    reason = break_image(path, fault)
    with pytest.raises(BadImageError, match=f"cannot decode image {path}: {reason}"):
        ds[4]
    ds[5]  # the others still load


@pytest.fixture()
def broken_split(tmp_path):
    """9 images with labels; images 1 and 2 (corrupt, empty) and 8 (truncated, the last) broken."""
    root, label_root = str(tmp_path / "train"), str(tmp_path / "labels")
    labels = write_split(root, label_root)
    ds = ImageNetTokenLabel(root, label_root)
    bad = {1: "corrupt", 2: "empty", 8: "truncated"}
    for index, fault in bad.items():
        break_image(ds.samples[index][0], fault)
    return root, label_root, labels, [ds.samples[i][0] for i in sorted(bad)]


def test_skip_takes_the_next_decodable_image_with_its_label(broken_split, tmp_path, caplog):
    root, label_root, labels, bad_paths = broken_split
    ds = ImageNetTokenLabel(root, label_root, bad_image="skip")
    ds.set_report_dir(str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING):
        samples = [ds[i] for i in range(len(ds))] + [ds[1]]
    for index, source in ((1, 3), (2, 3), (8, 0)):  # 1, 2 -> 3; 8 (last) wraps to 0
        img, packed = samples[index]
        np.testing.assert_array_equal(img, samples[source][0])
        np.testing.assert_array_equal(packed, samples[source][1])  # its own label map and class
        assert packed[2, 0, 0, 5] == ds.samples[source][1]
    rel = os.path.relpath(ds.samples[3][0], root)
    np.testing.assert_array_equal(samples[3][1][:2], labels[rel].astype(np.float32))
    assert read_fault_report(str(tmp_path / "run")) == {"skipped_images": bad_paths, "label_fallbacks": []}
    lines = (tmp_path / "run" / REPORT_FILES["skipped_images"]).read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == bad_paths
    assert lines[1] == f"{bad_paths[1]}\tempty file (0 bytes)"
    assert all(caplog.text.count(f"skipping image {p}:") == 1 for p in bad_paths)


def test_skip_with_two_workers_is_deterministic_and_listed_once(broken_split, tmp_path):
    root, label_root, _, bad_paths = broken_split

    def epochs(num_workers: int, report_dir: str, start_iter: int = 0) -> list:
        ds = ImageNetTokenLabel(root, label_root, transforms=AUGMENT, bad_image="skip", seed=3)
        ds.set_report_dir(report_dir)
        loader = build_loader(ds, batch_size=3, num_workers=num_workers, train=True, seed=3)
        batches = []
        for epoch in range(2):
            ds.set_epoch(epoch)
            loader.batch_sampler.set_epoch(epoch)
            loader.batch_sampler.set_start_iter(start_iter if epoch == 1 else 0)
            batches += [(img.numpy(), lab.numpy()) for img, lab in loader]
        return batches

    main, workers = epochs(0, str(tmp_path / "main")), epochs(2, str(tmp_path / "workers"))
    resumed = epochs(2, str(tmp_path / "workers"), start_iter=1)  # a resumed run appends to the same report
    assert len(main) == len(workers) == 6 and len(resumed) == 5
    for a, b in zip(main, workers):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    for a, b in zip(main[:3] + main[4:], resumed):
        np.testing.assert_array_equal(a[1], b[1])
    for run in ("main", "workers"):
        lines = (tmp_path / run / REPORT_FILES["skipped_images"]).read_text().splitlines()
        assert sorted(line.split("\t")[0] for line in lines) == bad_paths  # each once, over 2 + 2 epochs
        assert not (tmp_path / run / REPORT_FILES["label_fallbacks"]).exists()


def test_every_image_bad_is_an_error(tmp_path):
    root = str(tmp_path / "train")
    write_split(root, wnids=("n01000000",))
    ds = ImageNetTokenLabel(root, bad_image="skip")
    for path, _ in ds.samples:
        break_image(path, "empty")
    with pytest.raises(ValueError, match=f"none of the 3 images under {root} can be decoded"):
        ds[0]


# --- broken token labels: an error naming file and fault, or the ground-truth map --------------------------

def break_label(path: str, fault: str) -> str:
    """Break the label file at ``path`` (a valid [2, 3, 9, 9] float16 map); returns the expected reason."""
    label = np.load(path)
    if fault == "vanished":
        os.remove(path)
    elif fault == "truncated":
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[:len(data) - 40])
    elif fault == "shape":
        np.save(path, label[..., :8])
    elif fault == "dtype":
        np.save(path, label.astype(np.float64))
    else:
        plane, value = {"id_too_large": (1, 3), "id_negative": (1, -1), "id_fraction": (1, 1.5),
                        "id_nan": (1, np.nan), "logit_nan": (0, np.nan), "logit_inf": (0, np.inf)}[fault]
        label[plane, 1, 4, 5] = value
        np.save(path, label)
    unreadable = "(cannot read|unreadable)"  # the error says the former, the report line the latter
    return {"vanished": unreadable, "truncated": unreadable, "shape": r"has shape \[2, 3, 9, 8\]",
            "dtype": "dtype float64", "id_too_large": r"class ids span \[0, 3\], outside \[0, 3\)",
            "id_negative": r"class ids span \[-1, 2\]", "id_fraction": "non-integer class ids",
            "id_nan": "NaN class ids", "logit_nan": "non-finite logits", "logit_inf": "non-finite logits"}[fault]


LABEL_FAULTS = ["vanished", "truncated", "shape", "dtype", "id_too_large", "id_negative", "id_fraction", "id_nan",
                "logit_nan", "logit_inf"]


@pytest.fixture()
def split(tmp_path):
    root, label_root = str(tmp_path / "train"), str(tmp_path / "labels")
    write_split(root, label_root)
    return root, label_root


def label_file(label_root: str, index: int) -> str:
    wnid = sorted(WNIDS)[index // 3]
    return os.path.join(label_root, wnid, f"{wnid}_{index % 3}.npy")


@pytest.mark.parametrize("fault", LABEL_FAULTS)
def test_bad_label_is_an_error_naming_file_and_fault(split, fault):
    root, label_root = split
    ds = ImageNetTokenLabel(root, label_root)
    path = label_file(label_root, 0)
    reason = break_label(path, fault)
    with pytest.raises(BadLabelError) as err:
        ds[0]
    assert path in str(err.value) and re.search(reason, str(err.value))
    ds[1]


@pytest.mark.parametrize("fault", ["truncated", "shape"])
def test_a_bad_first_label_does_not_set_the_label_shape(split, fault):
    root, label_root = split
    break_label(label_file(label_root, 0), fault)
    ds = ImageNetTokenLabel(root, label_root, bad_label="ground_truth")
    assert ds.label_shape == (2, 3, 9, 9)
    np.testing.assert_array_equal(ds[0][1][:2], fallback_label_map(0, 3, (2, 3, 9, 9)))


@pytest.mark.parametrize("fault", LABEL_FAULTS)
def test_bad_label_ground_truth_fallback_is_listed(split, tmp_path, fault, caplog):
    root, label_root = split
    ds = ImageNetTokenLabel(root, label_root, bad_label="ground_truth")
    ds.set_report_dir(str(tmp_path / "run"))
    path = label_file(label_root, 4)
    reason = break_label(path, fault)
    with caplog.at_level(logging.WARNING):
        _, packed = ds[4]
        _, again = ds[4]
    np.testing.assert_array_equal(packed[:2], fallback_label_map(1, 3, (2, 3, 9, 9)))
    np.testing.assert_array_equal(again, packed)
    assert read_fault_report(str(tmp_path / "run")) == {"skipped_images": [], "label_fallbacks": [path]}
    line = (tmp_path / "run" / REPORT_FILES["label_fallbacks"]).read_text()
    assert re.match(f"{re.escape(path)}\t.*{reason}", line) and line.count("\n") == 1
    assert caplog.text.count(f"using the ground-truth label map instead of {path}:") == 1


def test_missing_labels_fall_back_and_are_listed(split, tmp_path):
    root, label_root = split
    path = label_file(label_root, 7)
    os.remove(path)
    ds = ImageNetTokenLabel(root, label_root, missing_label="ground_truth")
    ds.set_report_dir(str(tmp_path / "run"))
    ds[7]
    assert (tmp_path / "run" / REPORT_FILES["label_fallbacks"]).read_text() == f"{path}\tmissing\n"


@pytest.mark.parametrize("fault", ["id_fraction", "logit_nan"])
def test_packed_labels_are_checked_on_read(split, tmp_path, fault):
    root, label_root = split
    reason = break_label(label_file(label_root, 5), fault)
    images = [p for p, _ in ImageNetTokenLabel(root, label_root).samples]
    pack = str(tmp_path / "pack")
    write_pack(pack, plan_pack(images, label_root), shard_size=4)
    ds = ImageNetTokenLabel(root, pack, label_format="packed")
    with pytest.raises(BadLabelError, match=f"n02000000/n02000000_2 in {pack}.*{reason}"):
        ds[5]
    ds = ImageNetTokenLabel(root, pack, label_format="packed", bad_label="ground_truth")
    ds.set_report_dir(str(tmp_path / "run"))
    np.testing.assert_array_equal(ds[5][1][:2], fallback_label_map(1, 3, (2, 3, 9, 9)))
    assert read_fault_report(str(tmp_path / "run"))["label_fallbacks"] == [ds.labels.where(5)]


def test_label_check_is_cheap():
    """The per-sample check of a [2, 5, 18, 18] map is vectorised: well under a millisecond."""
    import timeit
    label = np.stack([np.zeros((5, 18, 18)), np.arange(5)[:, None, None].repeat(18, 1).repeat(18, 2)])
    label = label.astype(np.float16)
    seconds = min(timeit.repeat(lambda: check_label_map(label, "x", (2, 5, 18, 18), 1000), number=200, repeat=3))
    assert seconds / 200 < 1e-3


def test_report_reading_deduplicates(tmp_path):
    """Lines another process appended without the lock (or a repeat) count once; a partial last line not at all."""
    (tmp_path / REPORT_FILES["skipped_images"]).write_text("a.jpg\tx\nb.jpg\ty\na.jpg\tx\nc.jp")
    assert read_fault_report(str(tmp_path)) == {"skipped_images": ["a.jpg", "b.jpg"], "label_fallbacks": []}
    log = FaultLog()
    log.set_report_dir(str(tmp_path))
    log.record("skipped_images", "b.jpg", "again")
    log.record("skipped_images", "d.jpg", "multi\nline\treason")
    assert (tmp_path / REPORT_FILES["skipped_images"]).read_text().endswith("c.jp\nd.jpg\tmulti line reason\n")
    assert read_fault_report(str(tmp_path))["skipped_images"] == ["a.jpg", "b.jpg", "d.jpg"]


@pytest.fixture
def damaged_demo(tmp_path):
    """Demo data (80 train images) with one truncated image and one label file of the wrong shape."""
    from passl_tl.datasets.demo import ensure_demo_dataset
    data_root = str(tmp_path / "demo")
    ensure_demo_dataset(data_root, num_classes=10, train_per_class=8, val_per_class=3)
    image = os.path.join(data_root, "train", "n00000003", "n00000003_0002.JPEG")
    label = os.path.join(data_root, "label_top5_train", "n00000005", "n00000005_0004.npy")
    with open(image, "r+b") as f:
        f.truncate(100)
    np.save(label, np.zeros((2, 5, 18), np.float16))
    return data_root, image, label


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # the error is reported once
def test_training_run_stops_naming_the_bad_image(damaged_demo, tmp_path):
    data_root, image, _ = damaged_demo
    overrides = small_run_overrides(data_root, str(tmp_path / "out"), epochs=1, workers=2)
    with pytest.raises(ValueError, match=re.escape(image)):
        train.main(["-c", DEMO_CONFIG, "-o", *overrides])


@pytest.mark.slow
def test_training_run_skips_and_falls_back_and_reports(damaged_demo, tmp_path):
    """A real run (2 DataLoader workers) replaces both, lists them in the output dir and logs the counts."""
    data_root, image, label = damaged_demo
    out = str(tmp_path / "out")
    metrics = train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, out, epochs=1, workers=2),
                          "data.train.bad_image=skip", "data.train.bad_label=ground_truth"])
    assert metrics["model/count"] == 30
    assert read_fault_report(out) == {"skipped_images": [image], "label_fallbacks": [label]}
    log = open(os.path.join(out, "log.txt"), encoding="utf-8").read()
    assert "data faults so far: 1 skipped images" in log and "1 label fallbacks" in log
    assert os.path.join(out, REPORT_FILES["skipped_images"]) in log
