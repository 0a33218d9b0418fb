"""Ctrl-C ends a run with one line saying what was saved and how to go on, never a traceback: in training (also when
the signal lands inside a PyLayer's backward, where Paddle turns a KeyboardInterrupt into an OSError), before
training (nothing is left of an output_dir the run created), and a second Ctrl-C still ends the run at once.

This file is also the script of these tests: ``python tests/tools/test_interrupts.py MODE ARGS`` sends itself SIGINT
where MODE says (``backward``: in the first PyLayer backward of the 3rd training step; ``backward_twice``: there,
and again after the repeat window; ``setup``: while the datasets are built) and runs tools/train.py with ARGS;
``wrapped`` runs one lean backward with SIGINT inside it, outside any training run; ``exit`` runs a tool that
prints ``done``, and sends SIGINT as the interpreter exits."""
import atexit
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from passl_tl.engine.preemption import REPEAT_WINDOW_S
from passl_tl.utils.cli import INTERRUPTED_EXIT_CODE
from passl_tl.utils.errors import PREEMPTED_EXIT_CODE

from tests.conftest import DEMO_CONFIG, REPO_ROOT, clean_env, small_run_overrides, train

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals")
STOP_STEP = 3
PREEMPTED = re.compile(r"^preempted: stopped on SIGINT after epoch (\d) iteration (\d): the newest checkpoint is "
                       r"(\S+); continue with --resume auto$")


def run_script(mode: str, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.abspath(__file__), mode, *args], cwd=REPO_ROOT, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def last_line(stderr: str) -> str:
    assert "Traceback" not in stderr and "error:" not in stderr, stderr[-3000:]
    return stderr.strip().splitlines()[-1]


def test_ctrl_c_inside_a_pylayer_backward_stops_at_the_step_with_a_checkpoint(reference_run, tmp_path):
    out = str(tmp_path / "out")
    done = run_script("backward", ["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, out)])
    assert done.returncode == PREEMPTED_EXIT_CODE, done.stderr[-3000:]
    checkpoint = os.path.join(out, f"ckpt_e0000_i{STOP_STEP:06d}.pdckpt")
    assert PREEMPTED.match(last_line(done.stderr)).groups() == ("0", str(STOP_STEP), checkpoint)
    assert os.path.isfile(checkpoint) and "received SIGINT: finishing the current step" in done.stdout


def test_a_second_ctrl_c_ends_the_run_at_once(reference_run, tmp_path):
    out = str(tmp_path / "out")
    done = run_script("backward_twice", ["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, out)])
    assert done.returncode == 128 + signal.SIGINT, done.stderr[-3000:]
    assert "received SIGINT again: stopping at once, without a checkpoint" in done.stdout
    assert not os.path.exists(os.path.join(out, f"ckpt_e0000_i{STOP_STEP:06d}.pdckpt"))  # the step never ended
    assert "Traceback" not in done.stderr


def test_ctrl_c_before_training_leaves_no_output_dir(reference_run, tmp_path):
    out = tmp_path / "runs" / "new"
    done = run_script("setup", ["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, str(out))])
    assert done.returncode == PREEMPTED_EXIT_CODE, done.stderr[-3000:]
    assert last_line(done.stderr) == ("preempted: stopped on SIGINT before training started, with no checkpoint "
                                      "written; run the same command again")
    assert os.listdir(tmp_path) == []  # neither runs/ nor runs/new is left


def test_ctrl_c_that_paddle_wraps_in_an_oserror_is_not_reported_as_bad_input():
    """A KeyboardInterrupt raised inside a PyLayer's backward reaches the tool as an OSError quoting it."""
    done = run_script("wrapped", [], timeout=120)
    assert done.returncode == INTERRUPTED_EXIT_CODE, done.stderr[-3000:]
    assert last_line(done.stderr) == "interrupted (SIGINT) before the end; files written so far are kept"
    assert "KeyboardInterrupt" in done.stdout  # what the tool's main() caught: Paddle's OSError


def test_ctrl_c_while_a_finished_tool_exits_changes_nothing():
    """The signal comes as the interpreter exits (here: from an exit handler), the tool's work done."""
    done = run_script("exit", [], timeout=120)
    assert (done.returncode, done.stdout) == (0, "done\n"), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ctrl_c_at_a_random_time_ends_with_one_line(reference_run, tmp_path, seed):
    """Ctrl-C as a terminal sends it, to the whole process group (the DataLoader workers too), at a seeded random
    time from the start of the run's log (set-up, training, evaluation, checkpoints, the end)."""
    out = str(tmp_path / "out")
    run = subprocess.Popen([sys.executable, train.__file__, "-c", DEMO_CONFIG, "-o",
                            *small_run_overrides(reference_run.data_root, out, workers=2)],
                           cwd=REPO_ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(out, "log.txt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.0, 12.0))
    os.killpg(run.pid, signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    if run.returncode == 0:  # it came after the last step boundary: the run ended as it would have
        assert "finished: top-1" in stdout, stderr[-3000:]
        return
    assert run.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    line = last_line(stderr)
    if line.endswith("run the same command again"):  # in the set-up: nothing is left of the output_dir
        assert not os.path.exists(out)
    else:
        assert os.path.isfile(PREEMPTED.match(line).group(3)), line


def signal_in_backward(twice: bool) -> None:
    """SIGINT to this process inside the first lean backward (``_DropPath``) of training step ``STOP_STEP``; with
    ``twice``, again one repeat window later."""
    from passl_tl.engine.trainer import Trainer
    from passl_tl.models import lean_backward
    train_step, backward, steps, sent = Trainer.train_step, lean_backward._DropPath.backward, [], []

    def counting_step(trainer, batch):
        steps.append(1)
        return train_step(trainer, batch)

    def signalling_backward(ctx, grad):
        if len(steps) == STOP_STEP and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            if twice:
                time.sleep(REPEAT_WINDOW_S + 0.5)
                os.kill(os.getpid(), signal.SIGINT)
        return backward(ctx, grad)
    Trainer.train_step = counting_step
    lean_backward._DropPath.backward = staticmethod(signalling_backward)


def signal_in_setup() -> None:
    """SIGINT to this process as the trainer builds its first dataset."""
    from passl_tl.engine import trainer
    build_dataset = trainer.build_dataset

    def signalling_build(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return build_dataset(*args, **kwargs)
    trainer.build_dataset = signalling_build


def wrapped_interrupt() -> None:
    """One backward of a lean drop-path step, with SIGINT sent inside it and Python's own handler in place."""
    import paddle
    from passl_tl.models import lean_backward
    backward = lean_backward._DropPath.backward

    def signalling_backward(ctx, grad):
        os.kill(os.getpid(), signal.SIGINT)
        return backward(ctx, grad)
    lean_backward._DropPath.backward = staticmethod(signalling_backward)
    branch = paddle.randn([2, 3, 4])
    branch.stop_gradient = False
    try:
        lean_backward.drop_path_add(None, branch, paddle.ones([2, 1, 1]), 0.9, 1.0).sum().backward()
    except OSError as e:
        print(e)
        raise


if __name__ == "__main__":
    from passl_tl.utils.cli import run_tool
    # Ctrl-C as a terminal's foreground job gets it: a suite started in the background by a non-interactive shell
    # (`.ci/run &`) hands its processes SIGINT ignored, and Python then keeps it ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    mode = sys.argv[1]
    if mode == "exit":  # registered before run_tool's, this exit handler runs after them
        atexit.register(os.kill, os.getpid(), signal.SIGINT)
    elif mode == "setup":
        signal_in_setup()
    elif mode.startswith("backward"):
        signal_in_backward(twice=mode == "backward_twice")
    mains = {"exit": lambda: print("done"), "wrapped": wrapped_interrupt}
    run_tool(mains.get(mode, lambda: train.main(sys.argv[2:])))
