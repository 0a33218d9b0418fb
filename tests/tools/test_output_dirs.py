"""One run per output directory: a new run does not write into a directory holding another run (finished or not),
``--resume auto`` of a finished run says so and writes nothing, and a run that stops before training leaves no
directory it created. Real runs of tools/train.py on the demo data; 2-process launches agree on rank 0's verdict."""
import os
import re
import shutil
import time

import pytest

from tests.conftest import DEMO_CONFIG, launch_two, processes_with, small_run_overrides, train

FINISHED_RUN = "config.yaml, final.pdparams, final_ema.pdparams, best.pdparams and 6 more"  # the reference run's


@pytest.fixture
def finished_run(reference_run, tmp_path) -> str:
    """A copy of the reference run's output dir (2 finished epochs), to write into."""
    out = str(tmp_path / "finished")
    shutil.copytree(reference_run.out, out)
    return out


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fails the test if the model is built."""
    def reached(*args, **kwargs):
        raise AssertionError("the model was built")
    monkeypatch.setattr(train, "build_model", reached)


def snapshot(directory: str) -> dict:
    """Every file's size and modification time (a refused run takes and releases the lock: the directory's own
    modification time changes)."""
    stats = {os.path.relpath(os.path.join(d, f), directory): os.stat(os.path.join(d, f))
             for d, _, names in os.walk(directory) for f in names}
    return {name: (stat.st_size, stat.st_mtime_ns) for name, stat in stats.items()}


def run_args(reference_run, out: str, *extra: str) -> list[str]:
    return ["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, out), *extra]


def test_a_new_run_in_a_finished_run_s_directory_is_refused_naming_it_and_the_ways_out(
        reference_run, finished_run, no_heavy_work):
    before = snapshot(finished_run)
    started = time.monotonic()
    with pytest.raises(FileExistsError) as refused:
        train.main(run_args(reference_run, finished_run))
    assert str(refused.value) == (
        f"output_dir {finished_run} already holds a run ({FINISHED_RUN}); a new run would mix its log, checkpoints "
        f"and weights with it. Continue that run with --resume auto, or start the new one in another directory "
        f"(-o output_dir=...)")
    assert time.monotonic() - started < 10 and snapshot(finished_run) == before


def test_resuming_another_directory_s_checkpoint_into_a_run_s_directory_is_refused(
        reference_run, finished_run, no_heavy_work):
    checkpoint = os.path.join(reference_run.out, "ckpt_e0001_i000002.pdckpt")
    before = snapshot(finished_run)
    with pytest.raises(FileExistsError, match=re.escape(
            f"--resume {checkpoint} would continue that checkpoint's run in output_dir {finished_run}, which holds "
            f"another run ({FINISHED_RUN}): resume into a new or empty output_dir (-o output_dir=...), or continue "
            f"the run of {finished_run} with --resume auto")):
        train.main(run_args(reference_run, finished_run, "--resume", checkpoint))
    assert snapshot(finished_run) == before


@pytest.mark.parametrize("resume", ["auto", "ckpt_e0001_i000005.pdckpt"])
def test_resuming_a_finished_run_says_so_and_writes_nothing(reference_run, finished_run, no_heavy_work, capsys,
                                                            resume):
    before, modified = snapshot(finished_run), os.stat(finished_run).st_mtime_ns  # not even a lock is taken
    end = os.path.join(finished_run, "ckpt_e0001_i000005.pdckpt")
    assert train.main(run_args(reference_run, finished_run, "--resume",
                               resume if resume == "auto" else end)) == {}
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].endswith(f"] already finished: {end} ends the last of 2 epochs and {finished_run} holds "
                              f"final.pdparams; nothing to do (to train longer, raise epochs; for a new run, pick "
                              f"another output_dir)")
    assert snapshot(finished_run) == before and os.stat(finished_run).st_mtime_ns == modified


def test_resume_auto_of_a_finished_run_trains_on_when_epochs_are_raised(reference_run, finished_run):
    train.main(run_args(reference_run, finished_run, "epochs=3", "--resume", "auto"))
    log = open(os.path.join(finished_run, "log.txt"), encoding="utf-8").read()
    assert f"resumed from {finished_run}/ckpt_e0001_i000005.pdckpt: continuing at epoch 2, iteration 0" in log
    assert "epoch 2 [5/5]" in log and os.path.exists(os.path.join(finished_run, "ckpt_e0002_i000005.pdckpt"))


def missing_data_config(tmp_path) -> str:
    config = tmp_path / "missing_data.yaml"
    config.write_text(f"_base_: {DEMO_CONFIG}\ndata:\n  train: {{name: ImageNetTokenLabel, root: /no/such/imagenet, "
                      f"label_root: /no/such/labels}}\n")
    return str(config)


def test_a_run_that_fails_before_training_leaves_no_directory_it_created(tmp_path):
    config = missing_data_config(tmp_path)
    with pytest.raises(OSError, match="/no/such/imagenet"):
        train.main(["-c", config, "-o", f"output_dir={tmp_path / 'runs' / 'lvvit' / 'out'}"])
    assert os.listdir(tmp_path) == ["missing_data.yaml"]


def test_a_directory_whose_run_stopped_before_training_takes_a_new_run(reference_run, tmp_path):
    """It exists, with the log of the failed start (appended to: it is no run's) and a file of the user's."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OSError, match="/no/such/imagenet"):
        train.main(["-c", missing_data_config(tmp_path), "-o", f"output_dir={out}"])
    assert sorted(os.listdir(out)) == ["log.txt", "notes.txt"]
    train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, str(out), epochs=1),
                "hooks.evaluate=null"])
    log = (out / "log.txt").read_text(encoding="utf-8")
    assert log.count("] training lvvit_tiny") == 1 and "epoch 0 [5/5]" in log
    assert (out / "notes.txt").read_text() == "mine" and (out / "final.pdparams").exists()


# ----------------------------------------------------------------------------- two processes

@pytest.mark.slow
def test_two_processes_refuse_a_run_s_directory_and_both_end_at_once(reference_run, finished_run, tmp_path):
    before = snapshot(finished_run)
    started = time.monotonic()
    proc, logs = launch_two([train.__file__, *run_args(reference_run, finished_run)], tmp_path / "log", timeout=120,
                            check=False)
    assert proc.returncode != 0 and time.monotonic() - started < 60, logs[0][-3000:] + logs[1][-3000:]
    assert f"error: output_dir {finished_run} already holds a run ({FINISHED_RUN})" in logs[0], logs[0][-3000:]
    assert re.search(rf"stopping: rank 0 \(pid \d+, host \S+\) failed: FileExistsError: output_dir "
                     rf"{re.escape(finished_run)} already holds a run", logs[1]), logs[1][-3000:]
    assert not processes_with(finished_run) and snapshot(finished_run) == before


@pytest.mark.slow
def test_two_processes_resuming_a_finished_run_both_exit_0_writing_nothing(reference_run, finished_run, tmp_path):
    before = snapshot(finished_run)
    _, logs = launch_two([train.__file__, *run_args(reference_run, finished_run, "--resume", "auto")],
                         tmp_path / "log", timeout=120)
    assert f"already finished: {finished_run}/ckpt_e0001_i000005.pdckpt ends the last of 2 epochs" in logs[0]
    assert "already finished" not in logs[1] and "Traceback" not in logs[0] + logs[1]
    assert snapshot(finished_run) == before
