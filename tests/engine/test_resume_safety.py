"""No silent wrong run: a resume that would change the sample order, a checkpoint without its checksum or with
non-finite values, weights written from a non-finite state, and two runs in one output_dir are each stopped
or reported, naming what is wrong."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from passl_tl.engine.checkpoint import load_checkpoint
from passl_tl.engine.hooks.checkpoint import CheckpointHook
from passl_tl.engine.run_lock import LOCK_NAME, process_start_ticks
from passl_tl.engine.sample_order import check_same_sample_order
from passl_tl.utils.errors import TrainingStopped

from tests.conftest import DEMO_CONFIG, REPO_ROOT, clean_env, small_run_overrides, train

MID_EPOCH = "ckpt_e0001_i000002.pdckpt"


def resume(reference_run, out, checkpoint, *overrides):
    return train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, str(out)), *overrides,
                       "--resume", checkpoint])


@pytest.mark.parametrize("overrides, changed", [
    # 80 images: 5 iterations per epoch at 16 and at 15 (drop_last), so only the record tells them apart
    (["data.batch_size=15"], r"data\.batch_size \(per process\) 16 -> 15"),
    (["seed=1"], r"seed 0 -> 1"),
    (["data.repeated_augmentation=2"], r"data\.repeated_augmentation 1 -> 2"),
])
def test_resume_with_another_sample_order_is_refused_naming_the_change(reference_run, tmp_path, overrides, changed):
    checkpoint = os.path.join(reference_run.out, MID_EPOCH)
    started = time.monotonic()
    with pytest.raises(ValueError, match=rf"cannot resume from {checkpoint}: the sample order would differ "
                                         rf".*{changed}"):
        resume(reference_run, tmp_path / "out", checkpoint, *overrides)
    assert time.monotonic() - started < 20  # before any training step


def test_resume_on_another_file_list_is_refused(reference_run, tmp_path):
    """Same number of images, one of them another file: the file list differs."""
    data_root = tmp_path / "demo"
    shutil.copytree(reference_run.data_root, data_root)
    folder = data_root / "train" / "n00000001"
    first = sorted(os.listdir(folder))[0]
    os.rename(folder / first, folder / ("renamed_" + first))
    label_folder = data_root / "label_top5_train" / "n00000001"
    stem = os.path.splitext(first)[0]
    os.rename(label_folder / f"{stem}.npy", label_folder / f"renamed_{stem}.npy")
    checkpoint = os.path.join(reference_run.out, MID_EPOCH)
    with pytest.raises(ValueError, match=r"the training file list .* [0-9a-f]{64} -> [0-9a-f]{64}"):
        train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(str(data_root), str(tmp_path / "out")),
                    "--resume", checkpoint])


def test_checkpoint_of_an_older_version_is_checked_on_what_it_records(caplog):
    saved = {"iters_per_epoch": 5, "accumulate_steps": 1}
    current = {"batch_size": 16, "world_size": 1, "seed": 0, "accumulate_steps": 1, "repeated_augmentation": 1,
               "dataset_size": 80, "file_list_sha256": "0" * 64, "iters_per_epoch": 5}
    check_same_sample_order(saved, current, "old.pdckpt")
    assert "old.pdckpt records only accumulate_steps, iters_per_epoch" in caplog.text
    with pytest.raises(ValueError, match="iterations per epoch 5 -> 6"):
        check_same_sample_order(saved, {**current, "iters_per_epoch": 6}, "old.pdckpt")


def copy_checkpoints(reference_run, out, names, checksums=True):
    out.mkdir()
    for name in names:
        shutil.copy(os.path.join(reference_run.out, name), out / name)
        if checksums:
            shutil.copy(os.path.join(reference_run.out, name + ".sha256"), out / (name + ".sha256"))


def test_checkpoint_without_checksum_is_read_with_a_warning(reference_run, tmp_path, caplog):
    out = tmp_path / "no_sums"
    copy_checkpoints(reference_run, out, [MID_EPOCH], checksums=False)
    state = load_checkpoint(str(out / MID_EPOCH))
    assert state["iters_done"] == 2
    assert f"checkpoint {out / MID_EPOCH} has no {MID_EPOCH}.sha256: it is read unverified" in caplog.text


def test_nonfinite_checkpoint_without_checksum_is_refused_and_auto_falls_back(reference_run, tmp_path):
    """A damaged value a checksum would have caught (here a NaN in a weight, the file rewritten without .sha256)."""
    out = tmp_path / "damaged"
    older, newest = "ckpt_e0000_i000005.pdckpt", MID_EPOCH
    copy_checkpoints(reference_run, out, [older])
    state = paddle.load(os.path.join(reference_run.out, newest))
    weight = state["model"]["backbone.cls_token"].numpy()
    weight.flat[3] = np.nan
    state["model"]["backbone.cls_token"] = paddle.to_tensor(weight)
    paddle.save(state, str(out / newest))
    with pytest.raises(ValueError, match=rf"checkpoint {out / newest} is corrupt: model\.backbone\.cls_token holds "
                                         r"non-finite values"):
        resume(reference_run, out, str(out / newest))
    resume(reference_run, out, "auto")
    log = open(out / "log.txt", encoding="utf-8").read()
    assert f"skipping checkpoint {out / newest}" in log and f"resumed from {out / older}" in log


def test_final_weights_are_never_written_from_a_nonfinite_state(tmp_path):
    model = paddle.nn.Linear(2, 2)
    model.weight.set_value(paddle.to_tensor([[1.0, float("inf")], [0.0, 1.0]]))
    trainer = SimpleNamespace(model_without_ddp=model, ema=None, output_dir=str(tmp_path))
    with pytest.raises(TrainingStopped, match=r"not writing final\.pdparams: the model's weight holds non-finite "
                                              r"values; the newest checkpoint is none"):
        CheckpointHook().after_run(trainer)
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------- one run per output_dir

def write_lock(out, pid, start_ticks):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, LOCK_NAME), "w", encoding="utf-8") as f:
        json.dump({"pid": pid, "host": socket.gethostname(), "start_ticks": start_ticks,
                   "started": "2026-12-01 10:00:00 +0000", "command": ["python", "tools/train.py"]}, f)


def test_a_running_run_s_lock_stops_a_second_run_naming_it(reference_run, tmp_path):
    out = str(tmp_path / "out")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(out, other.pid, process_start_ticks(other.pid))
        started = time.monotonic()
        with pytest.raises(OSError, match=rf"output_dir {out} is in use by another run \(pid {other.pid} on host "
                                          rf"{socket.gethostname()}, started 2026-12-01 10:00:00"):
            train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, out, epochs=1)])
        assert time.monotonic() - started < 10
        assert sorted(os.listdir(out)) == [LOCK_NAME]  # nothing of the second run written
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("reused_pid", [False, True])
def test_the_lock_of_a_run_that_is_gone_is_taken_over_with_a_warning(reference_run, tmp_path, reused_pid):
    """Gone: its pid is free, or now belongs to a process started later (another start time)."""
    out = str(tmp_path / "out")
    if reused_pid:
        write_lock(out, os.getpid(), process_start_ticks(os.getpid()) - 1)
    else:
        ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        write_lock(out, int(ended.stdout), 12345)
    train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, out, epochs=1),
                "hooks.evaluate=null"])
    log = open(os.path.join(out, "log.txt"), encoding="utf-8").read()
    assert f"took over the lock of {out}, left by a run that is gone (pid" in log
    assert not os.path.exists(os.path.join(out, LOCK_NAME))  # released at the end


def test_two_real_runs_in_one_output_dir(reference_run, tmp_path):
    out = str(tmp_path / "out")
    first = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"), "-c", DEMO_CONFIG, "-o",
                              *small_run_overrides(reference_run.data_root, out, epochs=1)],
                             cwd=REPO_ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(out, LOCK_NAME)) and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(OSError, match=rf"in use by another run \(pid {first.pid} on host"):
            train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, out, epochs=1)])
        assert first.wait(timeout=120) == 0
    finally:
        first.kill()
    log = open(os.path.join(out, "log.txt"), encoding="utf-8").read()
    assert log.count("wrote final.pdparams") == 1 and "in use by another run" not in log
