"""A bad input file ends the run within seconds, whatever the worker count: exit code 2, the error naming the file,
no process left behind. Training, the evaluation inside a training run, ``--evaluate-only``, a 2-process launch,
and the other tools that read images through a DataLoader.

The hangs these guard against: with ``num_workers: 0`` Paddle's reader thread died on the dataset's error without
waking the main thread, which waited for the next batch forever; with workers, an iteration left unfinished by an
error was shut down by its ``__del__`` at interpreter exit, which blocked for good when the loader had fewer batches
than workers (here: one validation batch of 100). Each run is a real subprocess: a hang fails it after TIMEOUT_S.
The last tests check the loader iteration itself (``engine.data.batches``) in this process.
"""
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import paddle
import pytest

from passl_tl.engine.data import batches, build_loader
from passl_tl.utils.registry import ConfigError
from tests.conftest import DEMO_CONFIG, REPO_ROOT, clean_env, launch_two, processes_with, small_run_overrides

TOOLS = os.path.join(REPO_ROOT, "tools")
TIMEOUT_S = 60  # a run still going then is killed and the test fails
ENDED_WITHIN_S = 40  # the slowest case (one training epoch, then evaluation) takes ~10 s alone
LEFTOVER_WAIT_S = 5.0
ONE_VAL_BATCH = "data.val_batch_size=100"  # the 30 validation images in one batch: fewer batches than workers


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> str:
    from passl_tl.datasets.demo import ensure_demo_dataset
    root = str(tmp_path_factory.mktemp("no_hangs") / "demo")
    return ensure_demo_dataset(root, num_classes=10, train_per_class=8, val_per_class=3)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """Freshly initialised weights of the demo model, for ``--load`` and ``--teacher-weights``."""
    from passl_tl import build_model
    from passl_tl.engine.run_config import load_run_config
    path = str(tmp_path_factory.mktemp("weights") / "demo.pdparams")
    paddle.save(build_model(load_run_config(DEMO_CONFIG, [])).state_dict(), path)
    return path


def damaged(demo: str, tmp_path, fault: str) -> tuple[str, str]:
    """A copy of the demo data with one bad file; returns the copy's root and that file."""
    root = str(tmp_path / "demo")
    shutil.copytree(demo, root)
    if fault == "val_image":  # the first image of class 4: in the one validation batch, and on rank 0 of 2
        folder = os.path.join(root, "val", "n00000004")
        path = os.path.join(folder, sorted(os.listdir(folder))[0])
        with open(path, "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    elif fault == "train_image":
        path = os.path.join(root, "train", "n00000003", "n00000003_0002.JPEG")
        with open(path, "r+b") as f:
            f.truncate(100)
    else:  # a token-label map of the wrong shape
        path = os.path.join(root, "label_top5_train", "n00000005", "n00000005_0004.npy")
        np.save(path, np.zeros((2, 5, 18), np.float16))
    return root, path


def run_tool(tool: str, args: list[str], marker: str) -> tuple[subprocess.CompletedProcess, float]:
    """``python tools/<tool>.py ARGS``; fails the test if it is still running after TIMEOUT_S."""
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, os.path.join(TOOLS, f"{tool}.py"), *args], cwd=REPO_ROOT,
                              env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"{tool} still running after {TIMEOUT_S} s (killed):\n{stderr[-3000:]}")
    seconds = time.monotonic() - start
    deadline = time.monotonic() + LEFTOVER_WAIT_S
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left running: {left}"
    return proc, seconds


def check_stopped_naming(proc: subprocess.CompletedProcess, seconds: float, bad_file: str) -> None:
    """Exit code 2 (a bad input, reported; not the exit guard's 1), soon, the last ``error:`` naming the file."""
    output = proc.stderr[-3000:]
    assert proc.returncode == 2, output
    assert seconds < ENDED_WITHIN_S, f"ended after {seconds:.1f} s:\n{output}"
    assert "Timeout (" not in proc.stderr, output  # the exit guard of run_tool did not have to end it
    errors = list(re.finditer(r"^error: ", proc.stderr, re.M))
    assert errors and bad_file in proc.stderr[errors[-1].start():], output


def train_args(data_root: str, out: str, workers: int, *extra: str) -> list[str]:
    return ["-c", DEMO_CONFIG, *extra, "-o", *small_run_overrides(data_root, out, epochs=1, workers=workers),
            ONE_VAL_BATCH]


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow), 2])
def test_corrupt_val_image_ends_the_training_run_in_its_evaluation(demo, tmp_path, workers):
    root, bad = damaged(demo, tmp_path, "val_image")
    out = str(tmp_path / "out")
    proc, seconds = run_tool("train", train_args(root, out, workers), out)
    check_stopped_naming(proc, seconds, bad)
    assert "epoch 0 [5/5]" in open(os.path.join(out, "log.txt"), encoding="utf-8").read()  # it did train first


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_corrupt_val_image_ends_evaluate_only(demo, weights, tmp_path, workers):
    root, bad = damaged(demo, tmp_path, "val_image")
    out = str(tmp_path / "out")
    proc, seconds = run_tool("train", train_args(root, out, workers, "--evaluate-only", "--load", weights), out)
    check_stopped_naming(proc, seconds, bad)


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("fault", ["train_image", "label"])
def test_bad_training_file_ends_the_run(demo, tmp_path, fault, workers):
    root, bad = damaged(demo, tmp_path, fault)
    out = str(tmp_path / "out")
    proc, seconds = run_tool("train", train_args(root, out, workers), out)
    check_stopped_naming(proc, seconds, bad)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_image_ends_token_label_generation(demo, weights, tmp_path, workers):
    root, bad = damaged(demo, tmp_path, "train_image")
    out = str(tmp_path / "labels")
    proc, seconds = run_tool("generate_token_labels", [
        "-c", DEMO_CONFIG, "--teacher-weights", weights, "--data", os.path.join(root, "train"), "--out", out,
        "--num-workers", str(workers), "--batch-size", "100"], out)
    check_stopped_naming(proc, seconds, bad)


def test_bad_image_ends_the_data_benchmark(tmp_path):
    """The benchmark times the loader at 0 workers first; its demo data, kept in --data-dir, gets a bad image."""
    data_dir = str(tmp_path / "bench")
    args = ["data", "--quick", "--data-dir", data_dir]
    first, _ = run_tool("benchmark", args, data_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = os.path.join(data_dir, os.listdir(data_dir)[0], "train", "n00000001")
    bad = os.path.join(folder, sorted(os.listdir(folder))[0])
    with open(bad, "wb") as f:
        f.write(b"garbage")
    proc, seconds = run_tool("benchmark", args, data_dir)
    check_stopped_naming(proc, seconds, bad)


@pytest.mark.slow
def test_corrupt_val_image_ends_a_two_process_run(demo, tmp_path):
    """Rank 0 meets the image in its evaluation and reports it; rank 1 stops on that report."""
    root, bad = damaged(demo, tmp_path, "val_image")
    out = str(tmp_path / "out")
    start = time.monotonic()
    proc, logs = launch_two([os.path.join(TOOLS, "train.py"), *train_args(root, out, 2)], tmp_path / "log",
                            timeout=120, check=False)
    seconds = time.monotonic() - start
    assert proc.returncode != 0, logs[0][-3000:] + logs[1][-3000:]
    assert seconds < 60, f"ended after {seconds:.1f} s"
    assert re.search(rf"rank 0 \(pid \d+, host \S+\) failed: .*BadImageError(.|\n)*{re.escape(bad)}", logs[0]), \
        logs[0][-3000:]
    assert re.search(r"stopping: rank 0 \(pid \d+, host \S+\) failed: .*BadImageError", logs[1]), logs[1][-3000:]
    time.sleep(1.0)
    assert not processes_with(out), "processes left running"


# ---- the loader itself, in this process ----

class Numbers(paddle.io.Dataset):
    """Items 0..7 as [2] arrays; reading item ``bad`` raises, naming it."""

    def __init__(self, bad: int | None = None):
        self.bad = bad

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> np.ndarray:
        if index == self.bad:
            raise ValueError(f"cannot read item {index}")
        return np.full(2, index, np.float32)


def within(seconds: float, work) -> object:
    """``work()``'s result or error, or a failure if it takes longer (its thread is then left behind, blocked)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = work()
        except BaseException as e:  # handed to the test
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def read_all(dataset: Numbers, workers: int) -> list:
    """Every batch of 2; without workers in a thread (the read that used to hang): Paddle starts workers from the
    main thread only (it sets a SIGCHLD handler)."""
    loader = build_loader(dataset, batch_size=2, num_workers=workers, train=False, seed=0)
    work = lambda: list(batches(loader))  # noqa: E731
    return within(30, work) if workers == 0 else work()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # Paddle's reader re-raises it
@pytest.mark.parametrize("workers", [0, 1])
def test_a_dataset_error_is_raised_where_the_loader_is_read(workers):
    with pytest.raises(ValueError, match="cannot read item 5"):
        read_all(Numbers(bad=5), workers)
    assert len(read_all(Numbers(), workers)) == 4


def test_an_unfinished_iteration_ends_its_workers_at_once():
    """Closed after its first batch (as ``contextlib.closing`` does when the loop's body raises), not at exit."""
    loader = build_loader(Numbers(), batch_size=1, num_workers=2, train=False, seed=0)
    before = set(multiprocessing.active_children())
    stream = batches(loader)
    next(stream)
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    stream.close()
    assert not workers & set(multiprocessing.active_children())


@pytest.mark.parametrize("train, key", [(True, "data.batch_size"), (False, "data.val_batch_size")])
def test_a_loader_of_batch_size_0_is_refused(train, key):
    with pytest.raises(ConfigError, match=rf"{re.escape(key)} must be an integer >= 1, got 0"):
        build_loader(Numbers(), batch_size=0, num_workers=0, train=train, seed=0)
