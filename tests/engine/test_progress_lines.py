"""Feedback on long work, from real runs: the training banner, interval lines with the step and the time left in the
epoch and the run, evaluation progress (in training and ``--evaluate-only``) and token-label generation progress.
The clocks of the logger and the progress lines are replaced, so every rate and ETA is exact."""
import os
import re

import paddle
import pytest

from passl_tl import build_model
from passl_tl.datasets.demo import ensure_demo_dataset, make_demo_dataset
from passl_tl.engine.hooks import EvaluateHook
from passl_tl.engine.hooks import logger as logger_hook
from passl_tl.engine.run_config import load_run_config
from passl_tl.utils import progress

from tests.conftest import DEMO_CONFIG, import_tool, small_run_overrides, train

STEP_S, EPOCH_END_S, TICK_S = 2.0, 10.0, 10.0
generate_token_labels = import_tool("generate_token_labels")


class Clock:
    """The logger's ``time``: stands still but where a test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now


class Ticking:
    """The progress lines' ``time``: each reading is ``TICK_S`` after the last (one per ``update()``)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += TICK_S
        return self.now


@pytest.fixture
def timed(monkeypatch) -> Clock:
    """Each training step takes ``STEP_S`` and each epoch's end (its evaluation) ``EPOCH_END_S`` on the logger's
    clock; progress lines tick."""
    clock = Clock()
    monkeypatch.setattr(logger_hook, "time", clock)
    monkeypatch.setattr(progress, "time", Ticking())
    train_step, after_epoch = train.Trainer.train_step, EvaluateHook.after_train_epoch

    def timed_step(trainer, batch):
        clock.now += STEP_S
        return train_step(trainer, batch)

    def timed_evaluation(hook, trainer):
        clock.now += EPOCH_END_S
        return after_epoch(hook, trainer)
    monkeypatch.setattr(train.Trainer, "train_step", timed_step)
    monkeypatch.setattr(EvaluateHook, "after_train_epoch", timed_evaluation)
    return clock


def test_training_logs_a_banner_then_lines_with_step_rate_and_times_left(reference_run, tmp_path, timed):
    overrides = small_run_overrides(reference_run.data_root, str(tmp_path / "out"))
    train.main(["-c", DEMO_CONFIG, "-o", *overrides])
    log = open(tmp_path / "out" / "log.txt", encoding="utf-8").read()
    model = build_model(load_run_config(DEMO_CONFIG, overrides))
    trainable = sum(int(p.size) for p in model.parameters() if not p.stop_gradient)
    assert (f"] training lvvit_tiny (LVViT/TokenLabelHead, {trainable / 1e6:.2f}M trainable parameters) for 2 epochs "
            f"of 5 iterations on 80 images (validation: 30 images); batch 16 x 1 process (cpu) x 1 accumulation step "
            f"= 16 images per optimizer step; outputs in {tmp_path / 'out'}\n") in log
    lines = re.findall(r"epoch (\d) \[(\d)/5\] loss \S+ lr \S+ (\S+) img/s \(x1 procs\) \| step (\d+)/10 of 2 epochs "
                       r"\| ETA epoch (\S+), run (\S+)\n", log)
    # 2 s a step (16 images: 8 img/s); the run's time left adds each epoch end at the 10 s measured after epoch 0
    assert lines == [("0", "2", "8.0", "2", "0:00:06", "0:00:16"), ("0", "4", "8.0", "4", "0:00:02", "0:00:12"),
                     ("0", "5", "8.0", "5", "0:00:00", "0:00:10"), ("1", "2", "8.0", "7", "0:00:06", "0:00:16"),
                     ("1", "4", "8.0", "9", "0:00:02", "0:00:12"), ("1", "5", "8.0", "10", "0:00:00", "0:00:10")]
    # 4 batches of 8 of the 30 validation images, 10 s apart: one line, at the third, per evaluation
    evaluations = re.findall(r"\] (epoch \d eval \(\w+\)), images: 24/30 \(80\.0%\)  0\.8/s  elapsed 0:00:30  ETA "
                             r"0:00:07\n", log)
    assert evaluations == ["epoch 0 eval (model)", "epoch 0 eval (EMA)", "epoch 1 eval (model)", "epoch 1 eval (EMA)"]


def test_evaluate_only_logs_its_progress(reference_run, monkeypatch, capsys):
    monkeypatch.setattr(progress, "time", Ticking())
    train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, "unused"),
                "--load", os.path.join(reference_run.out, "final.pdparams"), "--evaluate-only"])
    out = capsys.readouterr().out
    assert re.findall(r"\] (evaluated images: .*)\n", out) == [
        "evaluated images: 24/30 (80.0%)  0.8/s  elapsed 0:00:30  ETA 0:00:07"]
    assert "images 30" in out.strip().splitlines()[-1]


def test_token_label_generation_logs_its_rate_and_time_left(tmp_path, monkeypatch, capsys):
    data = make_demo_dataset(str(tmp_path / "demo"), num_classes=5, train_per_class=3, val_per_class=1)
    teacher = ["model.num_classes=5", "model.embed_dim=48", "model.depth=2", "model.num_heads=2"]
    weights = str(tmp_path / "teacher.pdparams")
    paddle.save(build_model(load_run_config(DEMO_CONFIG, teacher)).state_dict(), weights)
    monkeypatch.setattr(progress, "time", Ticking())
    generate_token_labels.main(["-c", DEMO_CONFIG, "-o", *teacher, "--teacher-weights", weights, "--data",
                                os.path.join(data, "train"), "--out", str(tmp_path / "labels"), "--batch-size", "4",
                                "--num-workers", "0"])
    # 15 images in batches of 4, 10 s apart: a line at the third
    assert re.findall(r"\] (labelled images: .*)\n", capsys.readouterr().out) == [
        "labelled images: 12/15 (80.0%)  0.4/s  elapsed 0:00:30  ETA 0:00:07"]


def test_the_demo_says_where_it_writes_its_data_before_the_wait(tmp_path, caplog):
    caplog.set_level("INFO", logger="passl_tl")
    root = str(tmp_path / "demo")
    params = dict(num_classes=5, train_per_class=1, val_per_class=1)
    ensure_demo_dataset(root, **params)
    ensure_demo_dataset(root, **params)  # written: nothing to say
    assert [r.getMessage() for r in caplog.records] == [f"writing the demo data to {root} (on first use only)"]
