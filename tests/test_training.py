"""End to end: training on real demo files, resume equivalence, evaluate-only, 2-process launch."""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import train  # noqa: E402  (tools/train.py)

DEMO_CONFIG = os.path.join(REPO_ROOT, "configs", "lvvit", "lvvit_demo.yaml")


def small_run_overrides(data_root, out_dir, epochs=2, workers=0):
    """The demo recipe on a smaller demo set: 80 train images (5 iterations of 16), 30 val images."""
    sizes = "train_per_class=8 val_per_class=3".split()
    return ([f"data.{split}.root={data_root}" for split in ("train", "val")]
            + [f"data.{split}.{s}" for split in ("train", "val") for s in sizes]
            + [f"output_dir={out_dir}", f"epochs={epochs}", "data.batch_size=16", "data.val_batch_size=8",
               f"data.num_workers={workers}", "model.drop_path_rate=0.1", "hooks.logger.interval=2",
               "hooks.checkpoint.interval_iters=2", "hooks.checkpoint.keep_last=10"])


def state(path):
    return {k: v.numpy() for k, v in paddle.load(path).items()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    data_root, out = str(base / "demo"), str(base / "full")
    metrics = train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, out)])
    return data_root, out, metrics


def test_training_writes_outputs_and_learns(full_run):
    _, out, metrics = full_run
    files = set(os.listdir(out))
    assert {"log.txt", "config.yaml", "command.txt", "best.pdparams", "final.pdparams", "final_ema.pdparams",
            "vdl"} <= files
    assert "ckpt_e0000_i000002.pdckpt" in files and "ckpt_e0001_i000005.pdckpt" in files
    assert not [f for f in files if ".tmp" in f]
    log = open(os.path.join(out, "log.txt")).read()
    assert "epoch 1 eval (30 images)" in log and "lr 1.000e-05" in log  # warmup lr applied in epoch 0
    assert metrics["model/count"] == 30 and metrics["tracked"] == "ema"
    assert metrics["model/top1"] > 30.0  # 10 classes: chance is 10%


def test_resume_matches_uninterrupted_run(full_run, tmp_path):
    data_root, out, metrics = full_run
    resumed_out = str(tmp_path / "resumed")
    resumed = train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, resumed_out),
                          "--resume", os.path.join(out, "ckpt_e0000_i000002.pdckpt")])
    log = open(os.path.join(resumed_out, "log.txt")).read()
    assert "continuing at epoch 0, iteration 2" in log
    assert "epoch 0 [2/5]" not in log and "epoch 0 [4/5]" in log  # the first two iterations were not rerun
    for name in ("final.pdparams", "final_ema.pdparams"):
        a, b = state(os.path.join(out, name)), state(os.path.join(resumed_out, name))
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}:{k}")
    assert resumed["model/top1"] == metrics["model/top1"] and resumed["ema/top1"] == metrics["ema/top1"]


def test_evaluate_only_reproduces_final_metrics(full_run, capsys):
    data_root, out, metrics = full_run
    # the training split is never read: point it at a directory that does not exist
    result = train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, out),
                         "data.train.root=/nonexistent/train", "--load", os.path.join(out, "final.pdparams"),
                         "--evaluate-only"])
    assert result["top1"] == metrics["model/top1"] and result["count"] == 30
    assert f"top-1 {result['top1']:.3f}" in capsys.readouterr().out


def test_amp_switch_is_accepted(full_run, tmp_path):
    """AMP is a config switch; on CPU Paddle runs the autocast region in fp32 and says so."""
    data_root, _, _ = full_run
    out = str(tmp_path / "amp")
    with pytest.warns(UserWarning, match="amp_guard"):
        metrics = train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, out, epochs=1),
                              "amp.enable=true", "amp.dtype=bfloat16"])
    log = open(os.path.join(out, "log.txt")).read()
    losses = [float(line.split(" loss ")[1].split()[0]) for line in log.splitlines() if " loss " in line]
    assert losses and all(np.isfinite(losses)) and metrics["model/count"] == 30


def launch(args, log_dir, timeout=600):
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", log_dir,
           os.path.join(REPO_ROOT, "tools", "train.py"), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PADDLE_", "FLAGS_"))}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    logs = {r: open(os.path.join(log_dir, f"workerlog.{r}")).read() for r in (0, 1)}
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs[0][-3000:] + logs[1][-3000:]
    return logs


def test_two_process_launch_trains_and_counts_each_val_image_once(full_run, tmp_path):
    data_root, out, metrics = full_run
    dist_out = str(tmp_path / "dist")
    logs = launch(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, dist_out, epochs=1, workers=1),
                   "data.batch_size=8"], str(tmp_path / "log_train"))
    assert "(x2 procs)" in logs[0] and "epoch 0 eval (30 images)" in logs[0]
    assert "[5/5]" in logs[0]  # 80 images / (8 per process x 2 processes)
    assert os.path.exists(os.path.join(dist_out, "final.pdparams"))
    # evaluation sharded over 2 processes equals the single-process result
    logs = launch(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, out), "--evaluate-only",
                   "--load", os.path.join(out, "final.pdparams")], str(tmp_path / "log_eval"))
    assert f"top-1 {metrics['model/top1']:.3f}" in logs[0] and "images 30" in logs[0]
