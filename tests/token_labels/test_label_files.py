"""Label files a teacher writes, read per file and packed: names that cannot collide (images sharing a
stem) and class ids above 2048 (a 5,000-class teacher: float32 files and packs, exact ids)."""
import os
import shutil

import cv2
import numpy as np
import paddle
import pytest

from passl_tl import build_model
from passl_tl.datasets.imagenet_token_label import ImageNetTokenLabel
from passl_tl.engine.run_config import load_run_config
from passl_tl.token_labels.files import label_dtype, label_keys
from passl_tl.token_labels.pack import INDEX_NAME, read_pack_index
from passl_tl.token_labels.targets import make_token_targets

from tests.conftest import DEMO_CONFIG, import_tool

generate_token_labels = import_tool("generate_token_labels")  # tools/generate_token_labels.py
pack_labels = import_tool("pack_labels")  # tools/pack_labels.py

NUM_CLASSES = 5000
TEACHER = [f"model.num_classes={NUM_CLASSES}", "model.embed_dim=48", "model.depth=1", "model.num_heads=2"]
FORCED = [4999, 4097, 2049]  # top-3 everywhere; float16 would store 5000, 4096, 2048
FORCED_PLANE = np.array(FORCED)[:, None, None]  # against ids [..., 3, H, W]
SHAPE = (2, 5, 8, 8)  # top-5 on the 8 x 8 token grid of a 64 px image
# image -> the label file generation must write for it: a.b.JPEG and a.b.png share the stem a.b
NAMES = {"n00000000/a.b.JPEG": "n00000000/a.b.JPEG.npy", "n00000000/a.b.png": "n00000000/a.b.png.npy",
         "n00000000/c.d.e.JPEG": "n00000000/c.d.e.npy", "n00000000/n0_1.JPEG": "n00000000/n0_1.npy",
         "n00000001/n00000001_0.JPEG": "n00000001/n00000001_0.npy"}
EVAL = [{"name": "ResizeCropPct", "size": 64, "crop_pct": 1.0}, {"name": "Normalize"}]  # the tool's, for DEMO_CONFIG


# ----------------------------------------------------------------------------- the rules

def test_float16_holds_the_ids_of_up_to_2049_classes():
    assert label_dtype(1000) == label_dtype(2049) == np.float16  # ids 0..2048: every existing label set
    assert label_dtype(2050) == label_dtype(21841) == np.float32
    for num_classes in (2049, 2050, NUM_CLASSES):
        ids = np.arange(num_classes)
        assert (ids.astype(label_dtype(num_classes)).astype(np.int64) == ids).all()


def test_label_keys_use_the_full_name_only_where_stems_are_shared():
    images = ["r/n1/a.b.JPEG", "r/n1/a.b.png", "r/n1/c.d.e.JPEG", "r/n1/n0_1.JPEG", "r/n2/a.b.JPEG"]
    assert label_keys(images) == ["n1/a.b.JPEG", "n1/a.b.png", "n1/c.d.e", "n1/n0_1", "n2/a.b"]
    assert label_keys(["r/n1/x.JPEG", "r/n1/x.JPEG", "r/n1/y.png"]) == ["n1/x", "n1/x", "n1/y"]  # listed twice


@pytest.mark.parametrize("images, first, second, key", [
    (["a/n1/x.JPEG", "b/n1/x.JPEG"], "a/n1/x.JPEG", "b/n1/x.JPEG", "n1/x.JPEG"),  # one directory name, two roots
    (["r/n1/x.JPEG", "r/n1/x.png", "r/n1/x.JPEG.png"], "r/n1/x.JPEG", "r/n1/x.JPEG.png", "n1/x.JPEG"),
])
def test_label_keys_refuse_two_images_for_one_label(images, first, second, key):
    with pytest.raises(ValueError, match=f"images {first} and {second} would share the token label {key}.npy"):
        label_keys(images)


# ----------------------------------------------------------------------------- a 5,000-class teacher

@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Images (distinct noise) named as in NAMES, a 5,000-class class list, the teacher's weights, the labels
    the tool wrote and those the teacher gives each image (``{relative image path: [2, 5, 8, 8] float32}``)."""
    base = tmp_path_factory.mktemp("wide")
    train = base / "train"
    for seed, name in enumerate(NAMES):
        (train / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(train / name), np.random.RandomState(seed).randint(0, 256, (64, 64, 3), np.uint8))
    classes = base / "classes.txt"
    classes.write_text("".join(f"n{k:08d}\n" for k in range(NUM_CLASSES)))
    paddle.seed(5)
    teacher = build_model(load_run_config(DEMO_CONFIG, TEACHER))
    bias = teacher.head.aux_head.bias  # the per-token classifier: these classes win at every position
    forced = bias.numpy()
    forced[FORCED] = [30.0, 29.0, 28.0]
    bias.set_value(forced)
    weights = str(base / "teacher.pdparams")
    paddle.save(teacher.state_dict(), weights)

    teacher.eval()
    images = ImageNetTokenLabel(str(train), transforms=EVAL, class_list=str(classes))
    dense = teacher.dense_logits(paddle.to_tensor(np.stack([images[i][0] for i in range(len(images))]))).numpy()
    ids = np.argsort(-dense, axis=1, kind="stable")[:, :SHAPE[1]]
    labels = np.stack([np.take_along_axis(dense, ids, axis=1), ids], axis=1).astype(np.float32)
    expected = {os.path.relpath(path, train): label for (path, _), label in zip(images.samples, labels)}
    args = ["-c", DEMO_CONFIG, "-o", *TEACHER, "--teacher-weights", weights, "--data", str(train),
            "--class-list", str(classes), "--batch-size", "2", "--num-workers", "0", "--out"]
    out = str(base / "labels")
    result = generate_token_labels.main([*args, out])
    return dict(base=base, train=str(train), classes=str(classes), args=args, out=out, result=result,
                expected=expected)


def assert_label(label, expected):
    """Ids exact, logits to float32 round-off (the tool ran other batches)."""
    np.testing.assert_array_equal(label[1], expected[1])
    np.testing.assert_allclose(label[0], expected[0], rtol=1e-5, atol=1e-4)


def test_generation_writes_exact_ids_above_2048_in_files_that_cannot_collide(labelled):
    out, expected = labelled["out"], labelled["expected"]
    assert labelled["result"]["written"] == len(NAMES)
    written = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, names in os.walk(out) for f in names)
    assert written == sorted(NAMES.values())
    labels = {image: np.load(os.path.join(out, name)) for image, name in NAMES.items()}
    for image, label in labels.items():
        assert label.dtype == np.float32 and label.shape == SHAPE
        assert (label[1, :3] == FORCED_PLANE).all()
        assert_label(label, expected[image])
    shared_folder = [labels[image] for image in NAMES if image.startswith("n00000000/")]
    assert all(not np.array_equal(a, b) for i, a in enumerate(shared_folder) for b in shared_folder[i + 1:])


def test_generation_resumes_and_rewrites_a_float16_file(labelled, tmp_path):
    out = str(tmp_path / "labels")
    shutil.copytree(labelled["out"], out)
    rounded = os.path.join(out, NAMES["n00000000/a.b.png"])
    np.save(rounded, np.load(rounded).astype(np.float16))  # what a float16 writer would have left
    result = generate_token_labels.main([*labelled["args"], out])
    assert (result["written"], result["skipped"]) == (1, len(NAMES) - 1)
    assert_label(np.load(rounded), labelled["expected"]["n00000000/a.b.png"])


@pytest.fixture(scope="module")
def packed(labelled):
    out = str(labelled["base"] / "pack")
    assert pack_labels.main(["--labels", labelled["out"], "--images", labelled["train"], "--out", out]) == 0
    return out


@pytest.fixture(scope="module")
def roots(labelled, packed):
    return {"files": labelled["out"], "packed": packed}


def wide_dataset(labelled, label_root, label_format, classes=None):
    return ImageNetTokenLabel(labelled["train"], label_root, label_format=label_format,
                              class_list=classes or labelled["classes"])


def test_pack_of_float32_labels_is_float32(labelled, packed):
    index = read_pack_index(packed)
    assert index.dtype == np.float32 and index.shape == SHAPE
    assert sorted(key for _, keys in index.shards for key in keys) == sorted(n[:-4] for n in NAMES.values())
    shard = np.load(os.path.join(packed, index.shards[0][0]))
    assert shard.dtype == np.float32 and set(np.unique(shard[:, 1, :3]).tolist()) == set(FORCED)


@pytest.mark.parametrize("label_format", ["files", "packed"])
def test_dataset_pairs_each_image_with_its_own_label(labelled, roots, label_format):
    ds = wide_dataset(labelled, roots[label_format], label_format)
    assert [os.path.relpath(path, labelled["train"]) for path, _ in ds.samples] == sorted(NAMES)
    for i, (path, _) in enumerate(ds.samples):
        image = os.path.relpath(path, labelled["train"])
        sample = ds[i][1]
        assert sample.dtype == np.float32
        np.testing.assert_array_equal(sample[:2], np.load(os.path.join(labelled["out"], NAMES[image])))
        assert_label(sample[:2], labelled["expected"][image])


def test_loader_batches_keep_exact_ids_into_the_targets(labelled, packed):
    ds = wide_dataset(labelled, packed, "packed")
    _, labels = next(iter(paddle.io.DataLoader(ds, batch_size=len(ds), shuffle=False)))
    assert labels.dtype == paddle.float32
    assert (labels.numpy()[:, 1, :3] == FORCED_PLANE).all()
    targets = make_token_targets(labels, NUM_CLASSES, label_size=8).numpy()  # [B, 5000, 2 + 64]
    assert (targets[:, :, 1:].argmax(axis=1) == FORCED[0]).all()  # the cls and every token target


@pytest.mark.parametrize("label_format, source", [("files", "n00000000/a.b.JPEG.npy"),
                                                  ("packed", f"n00000000/a.b.JPEG in .*{INDEX_NAME}")])
def test_ids_beyond_the_dataset_classes_are_an_error_naming_the_label(labelled, roots, tmp_path, label_format,
                                                                      source):
    fewer = tmp_path / "classes.txt"
    fewer.write_text("".join(f"n{k:08d}\n" for k in range(FORCED[0])))  # 4999 classes: id 4999 is one too many
    ds = wide_dataset(labelled, roots[label_format], label_format, str(fewer))
    with pytest.raises(ValueError, match=rf"{source}: class ids span \[\d+, 4999\], outside \[0, 4999\)"):
        ds[0]


def test_float16_labels_pack_with_float32_ones_exactly(labelled, tmp_path, capsys):
    """An older float16 file among float32 ones: the pack is float32, the float16 row widened exactly."""
    labels = tmp_path / "labels"
    shutil.copytree(labelled["out"], labels)
    old = labels / NAMES["n00000001/n00000001_0.JPEG"]
    half = np.load(old)
    half[1] = np.arange(5)[:, None, None]  # ids float16 holds
    half = half.astype(np.float16)
    np.save(old, half)
    assert pack_labels.main(["--labels", str(labels), "--images", labelled["train"], "--out", str(tmp_path / "p")]) == 0
    assert f"labels of shape {list(SHAPE)} float32" in capsys.readouterr().out
    files, packs = (wide_dataset(labelled, root, layout) for root, layout in ((str(labels), "files"),
                                                                              (str(tmp_path / "p"), "packed")))
    last = len(files) - 1  # n00000001_0
    np.testing.assert_array_equal(files[last][1][:2], half.astype(np.float32))
    for i in range(len(files)):
        np.testing.assert_array_equal(packs[i][1], files[i][1])


def test_pack_reports_a_label_named_by_a_shared_stem(labelled, tmp_path, capsys):
    """``a.b.npy`` (what a stem-named writer leaves) could be either image's: it belongs to none."""
    labels = tmp_path / "labels"
    shutil.copytree(labelled["out"], labels)
    shutil.copy(labels / "n00000000" / "a.b.JPEG.npy", labels / "n00000000" / "a.b.npy")
    assert pack_labels.main(["--labels", str(labels), "--images", labelled["train"], "--out", str(tmp_path / "p")]) == 1
    assert f"extra label: {labels / 'n00000000' / 'a.b.npy'} belongs to no image" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
