"""Preemption: on SIGTERM (or SIGINT) every process finishes its step, a checkpoint is written there and the run
exits with 75; ``--resume auto`` then ends exactly where the uninterrupted run ends. A dead launcher stops its ranks.

This file is also the training script of these tests: ``python tests/engine/test_preemption.py N ARGS`` runs
tools/train.py with ARGS and sends this process SIGTERM during its N-th training step (N = 0: never)."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from passl_tl.engine.preemption import REPEAT_WINDOW_S, StopSignals
from passl_tl.utils.errors import PREEMPTED_EXIT_CODE
from passl_tl.utils.logger import get_logger

from tests.conftest import (DEMO_CONFIG, REPO_ROOT, assert_same_final_state, clean_env, launch_two,
                            processes_with, small_run_overrides, train)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and /proc")
ONE_EPOCH_END = ("final.pdparams", "final_ema.pdparams", "ckpt_e0000_i000005.pdckpt")


def signal_at_step(step: int) -> None:
    """SIGTERM to this process during its ``step``-th training step (1-based)."""
    from passl_tl.engine.trainer import Trainer
    train_step, calls = Trainer.train_step, []

    def signalling_step(trainer: Trainer, batch):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return train_step(trainer, batch)
    Trainer.train_step = signalling_step


def run_script(step: int, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.abspath(__file__), str(step), *args], cwd=REPO_ROOT,
                          env=clean_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("step, stops_after", [
    (3, "epoch 0 iteration 3"),  # mid-epoch
    pytest.param(5, "epoch 0 iteration 5", marks=pytest.mark.slow),  # the epoch's last step: after its evaluation
])
def test_sigterm_saves_and_resume_auto_equals_uninterrupted_run(reference_run, tmp_path, step, stops_after):
    out = str(tmp_path / "preempted")
    args = ["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, out)]
    done = run_script(step, args)
    assert done.returncode == PREEMPTED_EXIT_CODE, done.stderr[-3000:]
    iters = int(stops_after.rsplit(" ", 1)[1])
    checkpoint = os.path.join(out, f"ckpt_e0000_i{iters:06d}.pdckpt")
    assert f"preempted: stopped on SIGTERM after {stops_after}: the newest checkpoint is {checkpoint}; continue " \
           f"with --resume auto" in done.stderr
    log = open(os.path.join(out, "log.txt"), encoding="utf-8").read()
    assert "received SIGTERM: finishing the current step, then saving a checkpoint" in log
    assert not os.path.exists(os.path.join(out, "final.pdparams"))
    assert not os.path.exists(os.path.join(out, ".passl_tl.lock"))  # released
    train.main([*args, "--resume", "auto"])
    log = open(os.path.join(out, "log.txt"), encoding="utf-8").read()
    assert f"resumed from {checkpoint}" in log
    assert_same_final_state(reference_run.out, out)


def test_first_signal_requests_a_stop_and_repeats_of_it_are_one_request():
    """paddle.distributed.launch sends its SIGTERM up to 3 times, 0.2 s apart: one request, no exit."""
    with StopSignals() as signals:
        assert not signals.requested
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert signals.requested and signals.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is not signals._handle  # restored


def test_the_signal_handler_logs_from_another_thread(monkeypatch):
    """The handler may interrupt the main thread inside a log write to the same buffered file; logging from
    the handler then fails ("reentrant call"), so the handler hands its line to another thread."""
    threads = []
    logger = get_logger()
    monkeypatch.setattr(logger, "warning", lambda message: threads.append((threading.current_thread(), message)))
    with StopSignals():
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not threads and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(threads) == 1 and threads[0][0] is not threading.main_thread()
    assert threads[0][1].startswith("received SIGTERM: finishing the current step")


@pytest.mark.parametrize("second, pause, code", [("SIGINT", 0.0, 130), ("SIGTERM", REPEAT_WINDOW_S + 0.5, 143)])
def test_a_second_signal_stops_at_once(second, pause, code):
    script = (f"import os, signal, time\nfrom passl_tl.engine.preemption import StopSignals\n"
              f"with StopSignals():\n    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep({pause})\n"
              f"    os.kill(os.getpid(), signal.{second})\n    time.sleep(30)\nprint('not stopped')\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=clean_env())
    assert done.returncode == code and "not stopped" not in done.stdout, done.stderr[-2000:]
    assert f"received {second} again: stopping at once" in done.stderr
    assert time.monotonic() - started < 20


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_spares_the_dataloader_workers(reference_run, tmp_path):
    """Slurm's scancel and Ctrl-C signal every process of the group: the workers ignore it, the run stops cleanly."""
    out = str(tmp_path / "group")
    run = subprocess.Popen([sys.executable, train.__file__, "-c", DEMO_CONFIG, "-o",
                            *small_run_overrides(reference_run.data_root, out, workers=2), "hooks.logger.interval=1"],
                           cwd=REPO_ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    wait_for(os.path.join(out, "log.txt"), "epoch 0 [2/5]")
    os.killpg(run.pid, signal.SIGTERM)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    assert re.search(r"preempted: stopped on SIGTERM after epoch \d iteration \d: the newest checkpoint is", stderr)


def start_launch(args: list[str], log_dir: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", log_dir, *args]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(path: str, text: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path) and text in open(path, encoding="utf-8", errors="replace").read():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} did not appear in {path} within {seconds} s")


@pytest.mark.slow
@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_two_processes_stop_on_a_signal_or_a_dead_launcher_and_resume_exactly(reference_run, tmp_path, kill):
    """The scheduler's SIGTERM to the launcher, or the launcher killed: both ranks stop at one step with a
    checkpoint (a dead launcher sends its ranks SIGTERM through the kernel), and the resumed run ends exactly
    where an uninterrupted 2-process run ends."""
    def overrides(out):
        return ["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, out, epochs=1),
                "data.batch_size=8", "hooks.logger.interval=1"]

    whole, stopped = str(tmp_path / "whole"), str(tmp_path / "stopped")
    launch_two([train.__file__, *overrides(whole)], tmp_path / "log_whole")
    log_dir = str(tmp_path / "log_stopped")
    launcher = start_launch([train.__file__, *overrides(stopped)], log_dir)
    wait_for(os.path.join(log_dir, "workerlog.0"), "epoch 0 [1/5]")
    launcher.send_signal(kill)
    launcher.wait(timeout=60)
    deadline = time.monotonic() + 30
    while processes_with(stopped) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_with(stopped), "ranks still running after the launcher ended"
    logs = [open(os.path.join(log_dir, f"workerlog.{r}"), encoding="utf-8").read() for r in (0, 1)]
    stops = [re.search(r"stopped on (SIGTERM|a stop signal to another process) after (epoch \d iteration \d): the "
                       r"newest checkpoint is", log) for log in logs]
    assert all(stops) and stops[0].group(2) == stops[1].group(2), logs[0][-2000:] + logs[1][-2000:]
    assert "SIGTERM" in stops[0].group(1) + stops[1].group(1)
    launch_two([train.__file__, *overrides(stopped), "--resume", "auto"], tmp_path / "log_resumed")
    assert_same_final_state(whole, stopped, ONE_EPOCH_END)


if __name__ == "__main__":
    from passl_tl.utils.cli import run_tool
    if int(sys.argv[1]):
        signal_at_step(int(sys.argv[1]))
    run_tool(lambda: train.main(sys.argv[2:]))
