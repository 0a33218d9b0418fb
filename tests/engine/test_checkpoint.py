"""Checkpoint files: atomic checksummed writes, names in training order, writes only on step boundaries."""
import os
from types import SimpleNamespace

import paddle
import pytest

from passl_tl.engine.checkpoint import (checkpoint_name, file_sha256, list_checkpoints, load_checkpoint,
                                        remove_temporaries, save_atomic, verify_checksum)
from passl_tl.engine.hooks.checkpoint import CheckpointHook
from passl_tl.utils.registry import ConfigError


def test_atomic_save_and_clear_errors(tmp_path):
    path = str(tmp_path / checkpoint_name(1, 10))
    save_atomic({"model": {"w": paddle.ones([2])}, "epoch": 1}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    with open(path, "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match=os.path.basename(path)):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nope.pdckpt"):
        load_checkpoint(str(tmp_path / "nope.pdckpt"))


def test_checksummed_save_detects_changed_bytes_and_leftovers_are_removed(tmp_path):
    path = str(tmp_path / checkpoint_name(0, 1))
    save_atomic({"model": {"w": paddle.arange(1000, dtype="float32")}, "epoch": 0}, path, checksum=True)
    assert open(path + ".sha256").read().strip() == file_sha256(path) and verify_checksum(path)
    with open(path, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\x00" * 8)
    with pytest.raises(ValueError, match=f"checkpoint {path} is corrupt or truncated"):
        load_checkpoint(path)
    (tmp_path / "ckpt_e0000_i000002.pdckpt.tmp4242").write_bytes(b"half")
    (tmp_path / "notes.tmp1").write_bytes(b"a user's file")  # not ours: kept
    assert remove_temporaries(str(tmp_path)) == [str(tmp_path / "ckpt_e0000_i000002.pdckpt.tmp4242")]
    os.remove(tmp_path / "notes.tmp1")
    assert sorted(os.listdir(tmp_path)) == [checkpoint_name(0, 1), checkpoint_name(0, 1) + ".sha256"]


def test_list_checkpoints_sorted(tmp_path):
    for e, i in [(2, 5), (0, 100), (2, 100), (10, 1)]:
        (tmp_path / checkpoint_name(e, i)).write_bytes(b"x")
    names = [os.path.basename(p) for p in list_checkpoints(str(tmp_path))]
    assert names == [checkpoint_name(0, 100), checkpoint_name(2, 5), checkpoint_name(2, 100), checkpoint_name(10, 1)]


def test_checkpoints_only_at_accumulation_boundaries(tmp_path):
    with pytest.raises(ConfigError, match="interval_iters=3 must be a multiple of .*accumulate_steps=2"):
        CheckpointHook(interval_iters=3).before_run(SimpleNamespace(optim_wrapper=SimpleNamespace(accumulate_steps=2)))
    CheckpointHook(interval_iters=4).before_run(SimpleNamespace(optim_wrapper=SimpleNamespace(accumulate_steps=2),
                                                                output_dir=str(tmp_path)))
