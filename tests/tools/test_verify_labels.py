"""tools/verify_labels.py on the demo's token labels and a pack of them: a manifest that sha256sum reads, and a
verification that names every changed, missing and unlisted file."""
import hashlib
import os
import subprocess

import pytest

from passl_tl.datasets.demo import make_demo_dataset

from tests.conftest import import_tool

verify_labels = import_tool("verify_labels")  # tools/verify_labels.py
pack_labels = import_tool("pack_labels")


@pytest.fixture()
def demo(tmp_path):
    """The demo data with 2 training images per class: 20 label files under label_top5_train/<wnid>/."""
    root = make_demo_dataset(str(tmp_path / "demo"), train_per_class=2, val_per_class=1)
    return root, os.path.join(root, "label_top5_train")


def label_files(directory: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(r, n), directory).replace(os.sep, "/")
                  for r, _, names in os.walk(directory) for n in names)


def test_manifest_lists_every_label_file_as_sha256sum_does(demo, capsys):
    _, labels = demo
    assert verify_labels.main(["--write", labels]) == 0
    manifest = labels + ".sha256"  # beside the directory, which stays as it was
    files = label_files(labels)
    assert len(files) == 20 and all(f.endswith(".npy") for f in files)
    lines = open(manifest, encoding="utf-8").read().splitlines()
    assert lines == [f"{hashlib.sha256(open(os.path.join(labels, f), 'rb').read()).hexdigest()}  {f}" for f in files]
    assert "hashed files: 20/20 (100.0%)" in capsys.readouterr().err
    checked = subprocess.run(["sha256sum", "--strict", "-c", manifest], cwd=labels, capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0 and checked.stdout.count(": OK") == 20
    assert verify_labels.main(["--verify", labels]) == 0
    assert f"{labels}: all 20 files match {manifest}" in capsys.readouterr().out


def test_verify_names_each_changed_missing_and_unlisted_file(demo, capsys):
    _, labels = demo
    verify_labels.main(["--write", labels])
    changed, missing = label_files(labels)[3], label_files(labels)[7]
    with open(os.path.join(labels, changed), "r+b") as f:  # one bit of the last logit
        f.seek(-1, os.SEEK_END)
        last = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last ^ 1]))
    os.remove(os.path.join(labels, missing))
    extra = os.path.join(os.path.dirname(changed), "stray.npy")
    open(os.path.join(labels, extra), "wb").close()
    capsys.readouterr()
    assert verify_labels.main(["--verify", labels]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [f"changed: {changed}", f"missing: {missing}", f"not in the manifest: {extra}",
            "1 changed, 1 missing, 1 not in the manifest; 18 files match"] == err[-4:]


def test_a_pack_is_verified_shard_by_shard_with_the_manifest_inside_it(demo, tmp_path, capsys):
    root, labels = demo
    pack = str(tmp_path / "pack")
    assert pack_labels.main(["--labels", labels, "--images", os.path.join(root, "train"), "--out", pack,
                             "--shard-size", "8"]) == 0
    manifest = os.path.join(pack, "SHA256SUMS")  # inside the directory: not listed in itself
    assert verify_labels.main(["--write", pack, "--manifest", manifest]) == 0
    names = [line.split("  ")[1] for line in open(manifest, encoding="utf-8").read().splitlines()]
    assert names == ["index.json", "labels_00000.npy", "labels_00001.npy", "labels_00002.npy"]  # 20 = 8 + 8 + 4
    assert verify_labels.main(["--verify", pack, "--manifest", manifest]) == 0
    with open(os.path.join(pack, "labels_00001.npy"), "r+b") as f:
        f.truncate(1000)
    capsys.readouterr()
    assert verify_labels.main(["--verify", pack, "--manifest", manifest]) == 1
    assert "changed: labels_00001.npy" in capsys.readouterr().err


def test_a_malformed_manifest_or_a_wrong_directory_is_an_error_naming_it(demo, tmp_path):
    _, labels = demo
    manifest = tmp_path / "bad.sha256"
    manifest.write_text(f"{'0' * 64}  n00000000/a.npy\nnot a checksum line\n")
    with pytest.raises(ValueError, match=rf"{manifest} line 2 is not '<sha256>  <path>'"):
        verify_labels.main(["--verify", labels, "--manifest", str(manifest)])
    with pytest.raises(FileNotFoundError, match="manifest .*nowhere.sha256 does not exist"):
        verify_labels.main(["--verify", labels, "--manifest", str(tmp_path / "nowhere.sha256")])
    with pytest.raises(FileNotFoundError, match="label directory .*absent does not exist"):
        verify_labels.main(["--write", str(tmp_path / "absent")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="label directory .*empty holds no files"):
        verify_labels.main(["--write", str(tmp_path / "empty")])
    open(os.path.join(labels, "n00000000", "a\\b.npy"), "wb").close()
    with pytest.raises(ValueError, match=r"a\\b\.npy: a name with a newline or backslash cannot be listed"):
        verify_labels.main(["--write", labels])
    assert not os.path.exists(labels + ".sha256")  # nothing half-written
