"""Two nodes on the loopback: two ``paddle.distributed.launch --master 127.0.0.1:PORT --nnodes 2`` launchers of one
process each train exactly as one launcher of two processes, and ``--resume auto`` continues every rank from the
checkpoint rank 0 chose, also when the nodes see their output dirs differently."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from tests.conftest import (DEMO_CONFIG, REPO_ROOT, assert_same_final_state, clean_env, launch_two, processes_with,
                            small_run_overrides, train)

LAUNCH_TIMEOUT_S = 240  # a launch takes ~20 s on a 2-core VM
MID_EPOCH, NEWEST = "ckpt_e0000_i000004.pdckpt", "ckpt_e0000_i000005.pdckpt"
END_STATE = ("final.pdparams", "final_ema.pdparams", NEWEST)


def train_args(data_root: str, out: str, *extra: str) -> list[str]:
    """The small demo run, 1 epoch of 5 iterations of 8 images per process (checkpoints at iterations 2, 4, 5)."""
    return [train.__file__, "-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, out, epochs=1),
            "data.batch_size=8", *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_nodes(node_args: list[list[str]], tmp_path) -> tuple[list[int], list[str]]:
    """Node r: a launcher ``--master 127.0.0.1:PORT --nnodes 2 --rank r --nproc_per_node 1`` running ``node_args[r]``
    (its process is rank r), both started together. Returns the launchers' exit codes and each node's process log.
    A launcher still running after ``LAUNCH_TIMEOUT_S`` is killed (its process then gets SIGTERM): the test fails."""
    master = f"127.0.0.1:{free_port()}"
    launchers = []
    for node, args in enumerate(node_args):
        cmd = [sys.executable, "-m", "paddle.distributed.launch", "--master", master, "--nnodes", "2", "--rank",
               str(node), "--nproc_per_node", "1", "--log_dir", str(tmp_path / f"log_node{node}"), *args]
        with open(tmp_path / f"launcher{node}.txt", "w") as output:
            launchers.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=clean_env(), stdout=output,
                                              stderr=subprocess.STDOUT))
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        codes = [launcher.wait(timeout=max(deadline - time.monotonic(), 1)) for launcher in launchers]
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
    logs = []
    for node in range(len(node_args)):
        path = tmp_path / f"log_node{node}" / "workerlog.0"
        logs.append(path.read_text(encoding="utf-8", errors="replace") if path.exists() else "")
    return codes, logs


def tails(logs: list[str]) -> str:
    return "\n".join(f"--- node {node}:\n{log[-3000:]}" for node, log in enumerate(logs))


def eval_line(log: str) -> str:
    return re.search(r"epoch 0 eval \(30 images\): .*", log).group(0)


def copy_checkpoints(source: str, out, names: list[str]) -> None:
    out.mkdir()
    for name in names:
        for file in (name, name + ".sha256"):
            shutil.copy(os.path.join(source, file), out / file)


def flip_a_byte(path) -> None:
    """Corrupt ``path`` in the middle: its SHA-256 no longer matches its ``.sha256``."""
    middle = os.path.getsize(path) // 2
    with open(path, "r+b") as f:
        f.seek(middle)
        byte = f.read(1)[0]
        f.seek(middle)
        f.write(bytes([byte ^ 0xFF]))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> SimpleNamespace:
    """The run every multi-node run here must equal: one launcher of 2 processes."""
    base = tmp_path_factory.mktemp("two_processes")
    data_root, out = str(base / "demo"), str(base / "out")
    _, logs = launch_two(train_args(data_root, out), base / "log", timeout=LAUNCH_TIMEOUT_S)
    return SimpleNamespace(data_root=data_root, out=out, log=logs[0])


@pytest.mark.slow
def test_two_nodes_train_bit_for_bit_as_one_launcher_of_two_processes(two_processes, tmp_path):
    out = str(tmp_path / "out")  # one directory for both nodes: a shared file system
    codes, logs = launch_nodes([train_args(two_processes.data_root, out)] * 2, tmp_path)
    assert codes == [0, 0], tails(logs)
    for node in (0, 1):  # --rank r: node r runs rank r, which trained the 5 iterations of its shard
        assert f" rank{node}] epoch 0 [5/5]" in logs[node], tails(logs)
    assert eval_line(logs[0]) == eval_line(two_processes.log)
    fingerprints = {re.search(r"weights fingerprint (\S+)", log).group(1) for log in (*logs, two_processes.log)}
    assert len(fingerprints) == 1
    assert_same_final_state(two_processes.out, out, (*END_STATE, "ckpt_e0000_i000002.pdckpt", MID_EPOCH))


@pytest.mark.slow
def test_resume_auto_continues_every_rank_from_the_checkpoint_rank_0_chose(two_processes, tmp_path):
    """Each node with its own disk: node 0's newest checkpoint is corrupt, node 1's copy of it is intact. Choosing
    for itself, rank 0 would continue at iteration 4 and rank 1 after the epoch's end; both continue at iteration 4,
    each from its own copy, and the run ends exactly where the uninterrupted one does."""
    outs = [tmp_path / "node0_out", tmp_path / "node1_out"]
    for out in outs:
        copy_checkpoints(two_processes.out, out, ["ckpt_e0000_i000002.pdckpt", MID_EPOCH, NEWEST])
    flip_a_byte(outs[0] / NEWEST)
    codes, logs = launch_nodes([train_args(two_processes.data_root, str(out), "--resume", "auto") for out in outs],
                               tmp_path)
    assert codes == [0, 0], tails(logs)
    assert f"skipping checkpoint {outs[0] / NEWEST}" in logs[0]
    for node, out in enumerate(outs):
        assert f"resumed from {out / MID_EPOCH}: continuing at epoch 0, iteration 4" in logs[node], tails(logs)
        assert re.findall(r"epoch 0 \[\d/5\]", logs[node]) == ["epoch 0 [5/5]"]  # nothing trained twice
    assert_same_final_state(two_processes.out, str(outs[0]), END_STATE)


@pytest.mark.slow
def test_resume_auto_stops_every_rank_when_one_cannot_read_the_chosen_checkpoint(two_processes, tmp_path):
    """Node 1's disk lacks the checkpoint rank 0 chose: choosing for itself, rank 1 would train from scratch beside a
    resumed rank 0. Both stop within seconds instead, naming the file, and no process is left."""
    outs = [tmp_path / "node0_out", tmp_path / "node1_out"]
    copy_checkpoints(two_processes.out, outs[0], [MID_EPOCH])
    outs[1].mkdir()
    codes, logs = launch_nodes([train_args(two_processes.data_root, str(out), "--resume", "auto") for out in outs],
                               tmp_path)
    assert codes[0] != 0 and codes[1] != 0, tails(logs)
    message = (f"--resume auto: rank 0 chose {MID_EPOCH}, which rank 1 cannot use: checkpoint not found: "
               f"{outs[1] / MID_EPOCH}; every process must see the output_dir of rank 0")
    assert message in logs[1], tails(logs)
    assert re.search(r"stopping: rank 1 \(pid \d+, host [^)]+\) failed: ValueError: " + re.escape(message), logs[0])
    assert "epoch 0 [" not in logs[0] + logs[1]  # no training step
    deadline = time.monotonic() + 30
    while processes_with(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_with(str(tmp_path)), "processes left running"
