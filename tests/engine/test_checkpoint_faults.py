"""Fault injection around checkpoints: SIGKILL during training and during a checkpoint write,
corrupt and truncated checkpoints, an unwritable output dir and a full disk. After each, the
run continues (``--resume auto``) to exactly the uninterrupted run's final state."""
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import paddle
import pytest

from passl_tl.engine import checkpoint as checkpoint_module
from passl_tl.engine.checkpoint import list_checkpoints, load_checkpoint

from tests.conftest import DEMO_CONFIG, REPO_ROOT, TOOLS_DIR, assert_same_final_state, small_run_overrides, train

# Imports tools/train.py, installs one fault (argv[1:3]) and runs train.main on the rest of argv.
KILLER = """
import os, signal, sys
sys.path.insert(0, {tools!r})
import paddle
import train
from passl_tl.engine.trainer import Trainer

mode, count = sys.argv[1], int(sys.argv[2])
calls = []

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "step":  # killed before the count-th training step
    step = Trainer.train_step
    def train_step(self, batch):
        calls.append(1)
        if len(calls) == count:
            die()
        return step(self, batch)
    Trainer.train_step = train_step
elif mode == "checkpoint":  # killed half-way through writing the count-th checkpoint
    save = paddle.save
    def half_save(obj, path, *args, **kwargs):
        save(obj, path, *args, **kwargs)
        if path.split(os.sep)[-1].startswith("ckpt_"):
            calls.append(1)
            if len(calls) == count:
                os.truncate(path, os.path.getsize(path) // 2)
                die()
    paddle.save = half_save
train.main(sys.argv[3:])
"""


@pytest.fixture()
def reference(reference_run):
    """The uninterrupted run (conftest): 2 epochs of 5 iterations, checkpoints at iterations 2, 4 and 5."""
    return reference_run.data_root, reference_run.out


def run_killed(tmp_path, mode, count, args):
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(tools=TOOLS_DIR))
    done = subprocess.run([sys.executable, str(script), mode, str(count), *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def resume_auto(data_root, out):
    train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, out), "--resume", "auto"])
    return open(os.path.join(out, "log.txt"), encoding="utf-8").read()


@pytest.mark.slow
@pytest.mark.parametrize("mode, count", [
    ("step", random.Random(7).randint(3, 9)),  # a random training step (of 10), the same on every run
    ("checkpoint", 3),                         # half-way through writing the 3rd checkpoint (epoch 1, iteration 2)
])
def test_sigkill_then_resume_auto_equals_uninterrupted_run(reference, tmp_path, mode, count):
    data_root, reference_dir = reference
    out = str(tmp_path / "killed")
    run_killed(tmp_path, mode, count, ["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, out)])
    written = list_checkpoints(out)
    for path in written:
        load_checkpoint(path)  # every checkpoint under its real name is complete and verifies
    if mode == "checkpoint":
        assert [os.path.basename(p) for p in written] == ["ckpt_e0000_i000002.pdckpt", "ckpt_e0000_i000004.pdckpt"]
        assert [f for f in os.listdir(out) if ".tmp" in f]  # the half-written file, under a temporary name
    log = resume_auto(data_root, out)
    if written:
        assert f"resumed from {written[-1]}" in log
    if mode == "checkpoint":
        assert "left by an interrupted checkpoint write" in log
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    assert_same_final_state(reference_dir, out)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_s", [round(random.Random(11).uniform(6.0, 14.0), 2)])  # seeded
def test_sigkill_at_a_random_time_then_resume_auto(reference, tmp_path, kill_after_s):
    """Killed from outside at a random moment (wherever it lands: start-up, a step, a checkpoint write)."""
    data_root, reference_dir = reference
    out = str(tmp_path / "killed")
    command = [sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"), "-c", DEMO_CONFIG,
               "-o", *small_run_overrides(data_root, out)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after_s)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    resume_auto(data_root, out)
    assert_same_final_state(reference_dir, out)


@pytest.mark.parametrize("damage", [pytest.param("truncate", marks=pytest.mark.slow), "flip"])
def test_corrupt_checkpoint_is_named_and_auto_falls_back(reference, tmp_path, damage):
    data_root, reference_dir = reference
    out = tmp_path / "damaged"
    out.mkdir()
    for name in ("ckpt_e0001_i000002.pdckpt", "ckpt_e0001_i000004.pdckpt"):  # as if killed before i5
        for suffix in ("", ".sha256"):
            shutil.copy(os.path.join(reference_dir, name + suffix), out / (name + suffix))
    newest = str(out / "ckpt_e0001_i000004.pdckpt")
    if damage == "truncate":
        os.truncate(newest, os.path.getsize(newest) - 100)
    else:  # same size, one byte changed in the middle: only the checksum can tell
        with open(newest, "r+b") as f:
            f.seek(os.path.getsize(newest) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=f"checkpoint {newest} is corrupt or truncated"):
        train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, str(out)), "--resume", newest])
    log = resume_auto(data_root, str(out))
    assert f"skipping checkpoint {newest}" in log and "falling back to the previous one" in log
    assert f"resumed from {out / 'ckpt_e0001_i000002.pdckpt'}" in log
    assert_same_final_state(reference_dir, str(out))


def test_resume_auto_refuses_when_every_checkpoint_is_unreadable(reference, tmp_path):
    data_root, reference_dir = reference
    out = tmp_path / "all_bad"
    out.mkdir()
    for name in ("ckpt_e0000_i000002.pdckpt", "ckpt_e0000_i000004.pdckpt"):
        (out / name).write_bytes(b"garbage")
    with pytest.raises(ValueError, match=f"none of the checkpoints in {out} can be read"):
        resume_auto(data_root, str(out))
    assert sorted(os.listdir(out)) >= ["ckpt_e0000_i000002.pdckpt", "ckpt_e0000_i000004.pdckpt"]  # kept


@pytest.mark.slow
def test_resume_auto_without_checkpoints_starts_from_scratch(reference, tmp_path):
    data_root, reference_dir = reference
    out = str(tmp_path / "fresh")
    log = resume_auto(data_root, out)
    assert "no checkpoint in" in log and "starting from scratch" in log
    assert_same_final_state(reference_dir, out)


def test_unwritable_output_dir_fails_before_any_work(reference, tmp_path):
    data_root, _ = reference
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out = str(blocker / "run")
    started = time.time()
    with pytest.raises(OSError, match=f"output_dir {out} is not writable"):
        train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, out)])
    assert time.time() - started < 5


def test_disk_full_while_saving_keeps_earlier_checkpoints(reference, tmp_path, monkeypatch):
    data_root, _ = reference
    out = str(tmp_path / "full")
    real_save, calls = paddle.save, []

    def save_until_full(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: the disk fills up half-way
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.paddle, "save", save_until_full)
    with pytest.raises(OSError, match=r"could not write .*ckpt_e0000_i000004\.pdckpt \(disk full\).*earlier files "
                                      r"are intact"):
        train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, out)])
    assert [os.path.basename(p) for p in list_checkpoints(out)] == ["ckpt_e0000_i000002.pdckpt"]
    assert load_checkpoint(list_checkpoints(out)[0])["iters_done"] == 2
    assert not [f for f in os.listdir(out) if ".tmp" in f]
