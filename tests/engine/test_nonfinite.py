"""Non-finite loss or gradients: the step is skipped with a warning up to a configured count, then the
run stops with a clear message, keeping only checkpoints from before the problem."""
import os
import re

import numpy as np
import paddle
import pytest

from passl_tl.engine.checkpoint import list_checkpoints, load_checkpoint
from passl_tl.models import Classifier
from passl_tl.utils.cli import run_tool
from passl_tl.utils.errors import TrainingStopped

from tests.conftest import DEMO_CONFIG, small_run_overrides, train


def inject(monkeypatch, steps, kind):
    """The model's training loss on the given steps of the next run (counted from 0): NaN, or finite
    with a NaN gradient (0 * d sqrt(x)/dx at x = 0)."""
    loss_of = Classifier.loss
    taken = []

    def faulty_loss(self, outputs, batch):
        loss = loss_of(self, outputs, batch)
        taken.append(len(taken))
        if taken[-1] in steps:
            if kind == "loss":
                return loss * float("nan")
            return loss + 0.0 * paddle.sqrt(0.0 * self.parameters()[0].sum())
        return loss
    monkeypatch.setattr(Classifier, "loss", faulty_loss)


def adam_steps(checkpoint):
    """Optimizer steps taken, from AdamW's beta1 power accumulator (beta1 = 0.9)."""
    optimizer = load_checkpoint(checkpoint)["optimizer"]
    (power,) = {float(np.asarray(v).ravel()[0]) for k, v in optimizer.items() if "beta1_pow" in k}
    return round(np.log(power) / np.log(0.9))


@pytest.mark.parametrize("kind", ["loss", pytest.param("gradient", marks=pytest.mark.slow)])
def test_nonfinite_steps_are_skipped_with_a_warning(reference_run, tmp_path, monkeypatch, kind):
    out = str(tmp_path / "faulty")
    inject(monkeypatch, {1, 3}, kind)
    train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, out, epochs=1)])
    log = open(os.path.join(out, "log.txt"), encoding="utf-8").read()
    warnings = re.findall(r"epoch 0 iteration (\d) \(step (\d)\): non-finite gradient .* step skipped \(1 in a row",
                          log)
    assert warnings == [("2", "1"), ("4", "3")]
    last = list_checkpoints(out)[-1]
    clean = os.path.join(reference_run.out, "ckpt_e0000_i000005.pdckpt")  # the end of the uninterrupted epoch 0
    assert adam_steps(last) == adam_steps(clean) - 2  # 3 of the 5 steps taken
    weights = paddle.load(os.path.join(out, "final.pdparams"))
    assert all(np.isfinite(v.numpy()).all() for v in weights.values())


def test_run_stops_after_too_many_nonfinite_steps_keeping_the_checkpoint_before(reference_run, tmp_path,
                                                                                monkeypatch):
    data_root, out = reference_run.data_root, str(tmp_path / "out")
    inject(monkeypatch, set(range(3, 10)), "loss")  # from the 4th step on (checkpoints every 2 iterations)
    overrides = [*small_run_overrides(data_root, out), "optim_wrapper.max_nonfinite_steps=2"]
    with pytest.raises(TrainingStopped) as stopped:
        train.main(["-c", DEMO_CONFIG, "-o", *overrides])
    before = os.path.join(out, "ckpt_e0000_i000002.pdckpt")
    message = str(stopped.value)
    assert "training stopped at epoch 1 iteration 1 (step 5): 3 steps in a row" in message
    assert "max_nonfinite_steps=2" in message and f"the newest is {before}" in message
    assert list_checkpoints(out) == [before] and not os.path.exists(os.path.join(out, "final.pdparams"))
    state = load_checkpoint(before)["model"]
    assert all(np.isfinite(v.numpy()).all() for v in state.values())
    log = open(os.path.join(out, "log.txt"), encoding="utf-8").read()
    assert "not saving a checkpoint at epoch 0 iteration 4" in log


def test_training_stopped_exits_1_with_one_line(capsys):
    def stops():
        raise TrainingStopped("training stopped at step 7: the loss stayed NaN")
    with pytest.raises(SystemExit) as ended:
        run_tool(stops)
    assert ended.value.code == 1
    assert capsys.readouterr().err == "error: training stopped at step 7: the loss stayed NaN\n"
