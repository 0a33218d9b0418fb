"""A dying rank or DataLoader worker ends the run: a non-zero exit soon after, the log naming who died and why.

The faults are real. This file is also the training script: ``python tests/engine/test_worker_death.py -c ...``
(alone or under ``paddle.distributed.launch``) injects the fault named by ``$PASSL_TL_TEST_FAULT`` and runs
tools/train.py.
"""
import multiprocessing
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from tests.conftest import DEMO_CONFIG, REPO_ROOT, clean_env, processes_with, small_run_overrides

FAULT_ENV = "PASSL_TL_TEST_FAULT"
FAULT_STEP = 2  # rank faults: at this training iteration
FAULT_ITEM = 10  # worker faults: at the 10th image a worker loads (its second batch)
EXIT_BOUND_S = 20  # fault -> job ended; unreported, gloo would wait 30 s and NCCL 30 minutes
RANK1 = r"rank 1 \(pid \d+, host \S+\)"
WORKER_RAISED = r"RuntimeError: injected failure in a DataLoader worker"
# Paddle raises this in the main thread when it runs Python as the worker dies (its SIGCHLD handler), else its
# reader thread finds the worker dead within 5 s, logs which, and the main thread's read fails (data reader ...)
WORKER_KILLED = (r"DataLoader process \(pid \d+\) exited is killed by signal: Killed"
                 r"|DataLoader \d workers exit unexpectedly, pids: \d+")
# the main thread raises the worker's own error (engine.data.batches), its message holding the worker's traceback
WORKER_CAUSES = {"worker_raise": rf"RuntimeError: DataLoader worker\(\d\) caught RuntimeError(.*\n)*.*{WORKER_RAISED}",
                 "worker_sigkill": r"SystemError: .*(DataLoader process \(pid \d+\) exited is killed"
                                   r"|data reader raises an exception)"}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="death reports read Linux /proc")


def fault_now(fault: str, message: str) -> None:
    os.write(sys.stdout.fileno(), f"injected {fault} at {time.time():.3f}\n".encode())
    if fault.endswith("sigkill"):
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(message)


def inject(fault: str) -> None:
    """Make the last rank fail: ``raise``/``sigkill`` at training iteration FAULT_STEP, ``worker_raise``/
    ``worker_sigkill`` in its DataLoader workers at their FAULT_ITEM-th image."""
    from passl_tl.datasets.imagenet_token_label import ImageNetTokenLabel
    from passl_tl.engine.trainer import Trainer
    from passl_tl.utils.dist import rank, world_size
    if rank() != world_size() - 1:
        return
    if fault in ("raise", "sigkill"):
        train_step = Trainer.train_step

        def failing_step(trainer: Trainer, batch):
            if trainer.global_step == FAULT_STEP:
                fault_now(fault, f"injected failure at step {FAULT_STEP}")
            return train_step(trainer, batch)
        Trainer.train_step = failing_step
    else:
        get_item, loaded = ImageNetTokenLabel.__getitem__, []

        def failing_get_item(dataset: ImageNetTokenLabel, index: int):
            loaded.append(index)
            if len(loaded) == FAULT_ITEM and multiprocessing.parent_process() is not None:
                fault_now(fault, "injected failure in a DataLoader worker")
            return get_item(dataset, index)
        ImageNetTokenLabel.__getitem__ = failing_get_item


@dataclass
class Run:
    returncode: int
    output: str  # the launcher's (or the lone process's) stdout and stderr
    logs: list[str]  # each rank's log
    log_txt: str  # <output_dir>/log.txt
    seconds_after_fault: float
    leftovers: list[int]  # pids of the run's processes still alive


def wait_for_leftovers(marker: str, seconds: float = 15.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (pids := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids


def run(fault: str, data_root: str, tmp_path, launch: bool) -> Run:
    out, log_dir = str(tmp_path / "out"), str(tmp_path / "log")
    launcher = ["-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", log_dir] if launch else []
    cmd = [sys.executable, *launcher, os.path.abspath(__file__), "-c", DEMO_CONFIG, "-o",
           *small_run_overrides(data_root, out, epochs=1, workers=2), "data.batch_size=8"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=clean_env(**{FAULT_ENV: fault}), capture_output=True, text=True,
                          timeout=240)
    ended = time.time()
    output = proc.stdout + proc.stderr
    logs = [open(os.path.join(log_dir, f"workerlog.{r}")).read() for r in (0, 1)] if launch else [output]
    fault_times = [float(t) for log in logs for t in re.findall(rf"injected {fault} at (\d+\.\d+)", log)]
    assert fault_times, f"the fault was not injected:\n{output[-3000:]}"
    log_txt = open(os.path.join(out, "log.txt")).read()
    return Run(proc.returncode, output, logs, log_txt, ended - min(fault_times), wait_for_leftovers(out))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data") / "demo")  # written by the first run


def check_ended(result: Run) -> None:
    assert result.returncode != 0, result.output[-3000:]
    assert result.seconds_after_fault < EXIT_BOUND_S, result.output[-3000:]
    assert not result.leftovers, f"processes left running: {result.leftovers}"


@pytest.mark.slow
def test_rank_exception_stops_every_rank_naming_it(data_root, tmp_path):
    result = run("raise", data_root, tmp_path, launch=True)
    check_ended(result)
    failure = rf"{RANK1} failed: RuntimeError: injected failure at step {FAULT_STEP}"
    assert re.search(failure, result.logs[1])
    for text in (result.logs[0], result.log_txt):  # rank 0 logged it before it stopped
        assert re.search(rf"stopping: {failure}", text), text[-3000:]
    assert re.search(failure, result.output)  # in the tail of the log the launcher names


@pytest.mark.slow
def test_killed_rank_is_named_with_its_signal(data_root, tmp_path):
    """The launcher names the dead rank when it sees it first; when rank 0 stopped first, rank 0's log names it."""
    result = run("sigkill", data_root, tmp_path, launch=True)
    check_ended(result)
    assert re.search(rf"{RANK1} was killed by signal 9 \(SIGKILL\)|Container rank 1 status failed .* code -9",
                     result.output), result.output[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["worker_raise", "worker_sigkill"])
def test_dataloader_worker_death_stops_every_rank(data_root, tmp_path, fault):
    result = run(fault, data_root, tmp_path, launch=True)
    check_ended(result)
    assert re.search(WORKER_RAISED if fault == "worker_raise" else WORKER_KILLED, result.logs[1])
    report = rf"stopping: {RANK1} failed: {WORKER_CAUSES[fault]}"
    assert re.search(report, result.log_txt), result.log_txt[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["worker_raise", "worker_sigkill"])
def test_dataloader_worker_death_ends_a_single_process_run(data_root, tmp_path, fault):
    result = run(fault, data_root, tmp_path, launch=False)
    check_ended(result)
    assert re.search(WORKER_RAISED if fault == "worker_raise" else WORKER_KILLED, result.output), \
        result.output[-3000:]


@pytest.mark.parametrize("end, cause", [
    (lambda: os._exit(3), "exited with code 3"),
    (lambda: os.kill(os.getpid(), signal.SIGKILL), "was killed by signal 9 (SIGKILL)"),
])
def test_exit_status_of_a_dead_unreaped_process(end, cause):
    from passl_tl.utils.dist import death_cause, exit_status
    pid = os.fork()
    if pid == 0:
        end()
    deadline = time.monotonic() + 10
    while (status := exit_status(pid)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert status is not None and death_cause(status) == cause
    os.waitpid(pid, 0)
    assert exit_status(pid) is None  # reaped: gone


if __name__ == "__main__":
    inject(os.environ[FAULT_ENV])
    runpy.run_path(os.path.join(REPO_ROOT, "tools", "train.py"), run_name="__main__")
