"""tools/convert_labels.py and tools/pack_labels.py on real files; the dataset reading a pack."""
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest

from passl_tl.datasets.demo import make_demo_dataset
from passl_tl.token_labels.pack import INDEX_NAME, read_pack_index
from passl_tl.utils.registry import DATASETS, ConfigError

from tests.conftest import REPO_ROOT, import_tool, write_torch_zip

convert_labels = import_tool("convert_labels")  # tools/convert_labels.py
pack_labels = import_tool("pack_labels")  # tools/pack_labels.py

SHAPE = (2, 5, 18, 18)
AUGMENT = [{"name": "RandomHorizontalFlipWithLabel"},
           {"name": "RandomResizedCropWithCoords", "size": 32, "scale": [0.2, 1.0]},
           {"name": "Normalize"}]


def official_label(seed, shape=SHAPE, dtype=np.float16):
    """A label map like the official ones: descending top-k logits, distinct class ids per cell."""
    rs = np.random.RandomState(seed)
    logits = -np.sort(-rs.uniform(0, 10, shape[1:]), axis=0)
    ids = np.argsort(rs.rand(*shape[1:]), axis=0) * 7
    return np.stack([logits, ids]).astype(dtype)


@pytest.fixture()
def sources(tmp_path):
    """Official-format (torch.save zip) label files: 5 good ones (one float32), 3 bad ones.
    Returns (src dir, {key: expected float16 label}, [bad paths])."""
    src = tmp_path / "src"
    good = {"n01/n01_0": official_label(0), "n01/n01_1": official_label(1), "n01/n01_2": official_label(2),
            "n02/n02_0": official_label(3), "n02/n02_1": official_label(4, dtype=np.float32)}
    for key, label in good.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        write_torch_zip(src / f"{key}.pt", label)
    truncated = src / "n01" / "n01_truncated.pt"
    write_torch_zip(truncated, official_label(5))
    truncated.write_bytes(truncated.read_bytes()[:1000])
    damaged = src / "n02" / "n02_damaged.pth"
    write_torch_zip(damaged, official_label(6))
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2:len(data) // 2 + 40] = bytes(40)  # inside the stored tensor: its CRC fails
    damaged.write_bytes(bytes(data))
    small = src / "n02" / "n02_small.pt"
    write_torch_zip(small, official_label(7, shape=(2, 5, 9, 9)))
    expected = {key: label.astype(np.float16) for key, label in good.items()}
    return str(src), expected, [str(truncated), str(damaged), str(small)]


def convert(src, dst, *args):
    return convert_labels.main(["--src", src, "--dst", str(dst), *args])


def outputs(dst):
    """{key: bytes} of every file under ``dst``'s class directories."""
    return {f"{d}/{f}": (dst / d / f).read_bytes() for d in sorted(os.listdir(dst)) if (dst / d).is_dir()
            for f in sorted(os.listdir(dst / d))}


def test_convert_counts_and_lists_failures(tmp_path, sources, capsys):
    src, expected, bad = sources
    dst = tmp_path / "dst"
    assert convert(src, dst, "--workers", "1") == 1
    out, err = capsys.readouterr()
    assert "converted 5, skipped 0 (done before), failed 3 of 8 label files of shape [2, 5, 18, 18]" in out
    assert "label files: 8/8" in err  # the progress line
    for key, label in expected.items():
        written = np.load(dst / f"{key}.npy")
        assert written.dtype == np.float16
        np.testing.assert_array_equal(written, label)
    assert sorted(outputs(dst)) == sorted(f"{key}.npy" for key in expected)  # no output, no temp file for bad ones
    failures = (dst / convert_labels.FAILURES_NAME).read_text().splitlines()
    assert len(failures) == 3
    for path, line in zip(sorted(bad), failures):
        assert path in line and f"failed: {line}" in err
    assert "not a PyTorch checkpoint" in failures[0] and "Bad CRC-32" in failures[1]
    assert "has shape [2, 5, 9, 9] dtype float16; expected [2, 5, 18, 18]" in failures[2]


def test_command_line_exit_code(tmp_path, sources):
    src, _, _ = sources
    run = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "convert_labels.py"), "--src", src,
                          "--dst", str(tmp_path / "dst"), "--workers", "1"], capture_output=True, text=True)
    assert run.returncode == 1 and "failed 3 of 8" in run.stdout and "n01_truncated.pt" in run.stderr


def test_convert_resumes(tmp_path, sources, capsys):
    src, _, bad = sources
    dst = tmp_path / "dst"
    convert(src, dst, "--workers", "1")
    first = outputs(dst)
    stamps = {key: os.stat(dst / key).st_mtime_ns for key in first}
    capsys.readouterr()
    assert convert(src, dst, "--workers", "1") == 1
    assert "converted 0, skipped 5 (done before), failed 3" in capsys.readouterr().out
    assert {key: os.stat(dst / key).st_mtime_ns for key in first} == stamps  # nothing rewritten
    os.remove(dst / "n01" / "n01_1.npy")  # lost
    with open(dst / "n02" / "n02_0.npy", "r+b") as f:  # interrupted by a crash of another writer
        f.truncate(200)
    for path in bad:
        os.remove(path)
    assert convert(src, dst, "--workers", "1") == 0
    assert "converted 2, skipped 3 (done before), failed 0 of 5" in capsys.readouterr().out
    assert outputs(dst) == first
    assert not (dst / convert_labels.FAILURES_NAME).exists()  # the old list went with the failures


def test_parallel_conversion_gives_identical_outputs(tmp_path, sources):
    src, _, _ = sources
    assert convert(src, tmp_path / "one", "--workers", "1") == 1
    assert convert(src, tmp_path / "two", "--workers", "2") == 1
    assert outputs(tmp_path / "two") == outputs(tmp_path / "one")
    assert ((tmp_path / "two" / convert_labels.FAILURES_NAME).read_text()
            == (tmp_path / "one" / convert_labels.FAILURES_NAME).read_text())


def test_shape_option_sets_the_expected_shape(tmp_path, sources, capsys):
    src, _, _ = sources
    assert convert(src, tmp_path / "dst", "--workers", "1", "--shape", "2,5,9,9") == 1
    assert "converted 1, skipped 0 (done before), failed 7 of 8" in capsys.readouterr().out
    assert os.listdir(tmp_path / "dst" / "n02") == ["n02_small.npy"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(str(tmp_path_factory.mktemp("demo")), num_classes=5, train_per_class=4,
                             val_per_class=1)


def pack(demo, out, labels=None, *args):
    return pack_labels.main(["--labels", labels or os.path.join(demo, "label_top5_train"),
                             "--images", os.path.join(demo, "train"), "--out", str(out), *args])


def dataset(demo, label_root, label_format, **kwargs):
    return DATASETS.build({"name": "ImageNetTokenLabel", "root": os.path.join(demo, "train"),
                           "label_root": str(label_root), "label_format": label_format,
                           "class_list": os.path.join(demo, "classes.txt"), **kwargs})


def assert_same_samples(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        (img_a, label_a), (img_b, label_b) = a[i], b[i]
        np.testing.assert_array_equal(img_a, img_b)
        np.testing.assert_array_equal(label_a, label_b)


def test_packed_labels_give_the_same_samples(demo, tmp_path, capsys):
    out = tmp_path / "pack"
    assert pack(demo, out, None, "--shard-size", "7") == 0
    assert "20 labels of shape [2, 5, 18, 18] float16 in 3 shards for 20 images" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == [INDEX_NAME, "labels_00000.npy", "labels_00001.npy", "labels_00002.npy"]
    shard = np.load(out / "labels_00002.npy", mmap_mode="r")
    assert isinstance(shard, np.memmap) and shard.shape == (6, *SHAPE) and shard.dtype == np.float16
    index = read_pack_index(str(out))
    np.testing.assert_array_equal(shard[5], np.load(os.path.join(demo, "label_top5_train",
                                                                 index.shards[2][1][5] + ".npy")))
    for transforms in ([], AUGMENT):
        files = dataset(demo, os.path.join(demo, "label_top5_train"), "files", transforms=transforms, seed=3)
        packed = dataset(demo, out, "packed", transforms=transforms, seed=3)
        assert packed.label_shape == files.label_shape == SHAPE and not packed.labels._shards  # not mapped yet
        assert_same_samples(packed, files)
        assert set(packed.labels._shards) == {0, 1, 2}
        assert all(isinstance(rows, np.memmap) for rows in packed.labels._shards.values())
    assert not pickle.loads(pickle.dumps(packed.labels))._shards  # a copy for a worker maps its own


def test_loader_workers_map_the_shards(demo, tmp_path):
    out = tmp_path / "pack"
    pack(demo, out, None, "--shard-size", "7")
    packed = dataset(demo, out, "packed", transforms=AUGMENT)
    files = dataset(demo, os.path.join(demo, "label_top5_train"), "files", transforms=AUGMENT)
    loaders = [paddle.io.DataLoader(ds, batch_size=5, shuffle=False, num_workers=2) for ds in (packed, files)]
    for (img_p, lab_p), (img_f, lab_f) in zip(*loaders):
        np.testing.assert_array_equal(img_p.numpy(), img_f.numpy())
        np.testing.assert_array_equal(lab_p.numpy(), lab_f.numpy())
    assert not packed.labels._shards  # only the workers opened shards


def test_pack_reports_missing_and_extra_labels(demo, tmp_path, capsys):
    labels = tmp_path / "labels"
    shutil.copytree(os.path.join(demo, "label_top5_train"), labels)
    os.remove(labels / "n00000003" / "n00000003_0001.npy")
    shutil.copy(labels / "n00000000" / "n00000000_0000.npy", labels / "n00000000" / "n00000000_0099.npy")
    out = tmp_path / "pack"
    assert pack(demo, out, str(labels)) == 1
    err = capsys.readouterr().err
    image = os.path.join(demo, "train", "n00000003", "n00000003_0001.JPEG")
    assert f"missing label: image {image} has no label file" in err
    assert f"extra label: {labels / 'n00000000' / 'n00000000_0099.npy'} belongs to no image" in err
    assert "1 images without a label, 1 labels without an image, 0 invalid labels" in err
    assert sorted(os.listdir(tmp_path)) == ["labels"]  # nothing written

    assert pack(demo, out, str(labels), "--allow-missing") == 0
    assert "19 labels" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match=f"no token label for image {image}: expected "
                                                f"n00000003/n00000003_0001 in {out / INDEX_NAME}"):
        dataset(demo, out, "packed")
    packed = dataset(demo, out, "packed", missing_label="ground_truth", transforms=AUGMENT)
    files = dataset(demo, labels, "files", missing_label="ground_truth", transforms=AUGMENT)
    assert packed.missing_labels == files.missing_labels == {13}
    assert_same_samples(packed, files)


def test_pack_reports_invalid_labels(demo, tmp_path, capsys):
    labels = tmp_path / "labels"
    shutil.copytree(os.path.join(demo, "label_top5_train"), labels)
    small, broken = labels / "n00000001" / "n00000001_0002.npy", labels / "n00000002" / "n00000002_0000.npy"
    np.save(small, official_label(0, shape=(2, 5, 9, 9)))
    broken.write_bytes(broken.read_bytes()[:100])
    assert pack(demo, tmp_path / "pack", str(labels)) == 1
    err = capsys.readouterr().err
    assert f"invalid label: cannot read token-label file {broken}" in err
    assert f"invalid label: token-label file {small} has shape [2, 5, 9, 9]; most labels have [2, 5, 18, 18]" in err
    assert not (tmp_path / "pack").exists()


def test_pack_errors_name_the_file(demo, tmp_path):
    out = tmp_path / "pack"
    pack(demo, out, None, "--shard-size", "7")
    with pytest.raises(FileExistsError, match=str(out)):
        pack(demo, out)
    with pytest.raises(FileNotFoundError, match=f"{demo}.*is not a token-label pack: it has no {INDEX_NAME}"):
        dataset(demo, demo, "packed")
    with pytest.raises(ConfigError, match="label_format"):
        dataset(demo, out, "shards")
    packed = dataset(demo, out, "packed")
    shard = out / "labels_00001.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    packed[0]  # shard 0 is fine
    with pytest.raises(ValueError, match=f"cannot read token-label shard {shard}"):
        packed[7]
    index = (out / INDEX_NAME).read_text()
    (out / INDEX_NAME).write_text(index.replace('"dtype": "float16"', '"dtype": "int8"'))
    with pytest.raises(ValueError, match=f"{out / INDEX_NAME} is not a valid token-label pack index: dtype int8 "
                                         f"is not a label dtype"):
        dataset(demo, out, "packed")
    (out / INDEX_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=f"{out / INDEX_NAME} is not a valid token-label pack index"):
        dataset(demo, out, "packed")


def test_class_ids_beyond_float16_stay_float32(tmp_path):
    """A float32 source with ids float16 would round is written float32; the others float16, as always."""
    wide = official_label(0, dtype=np.float32)
    wide[1, 0, 0, 0] = 2049  # the nearest float16 values are 2048 and 2050
    (tmp_path / "src" / "n01").mkdir(parents=True)
    write_torch_zip(tmp_path / "src" / "n01" / "wide.pt", wide)
    write_torch_zip(tmp_path / "src" / "n01" / "narrow.pt", official_label(1, dtype=np.float32))
    assert convert(str(tmp_path / "src"), tmp_path / "dst", "--workers", "1") == 0
    written = np.load(tmp_path / "dst" / "n01" / "wide.npy")
    assert written.dtype == np.float32 and written[1, 0, 0, 0] == 2049
    np.testing.assert_array_equal(written, wide)
    assert np.load(tmp_path / "dst" / "n01" / "narrow.npy").dtype == np.float16
