"""PaddleClas's command names: tools/eval.py is train.py --evaluate-only, tools/infer.py is predict.py."""
import os
import subprocess
import sys

import pytest

from tests.conftest import DEMO_CONFIG, REPO_ROOT, TOOLS_DIR, clean_env, import_tool, small_run_overrides

eval_tool = import_tool("eval")  # tools/eval.py
predict = import_tool("predict")


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """``python tools/<name>.py ARGS`` as a user types it (tools/ on the path only as the script's directory)."""
    return subprocess.run([sys.executable, os.path.join(TOOLS_DIR, f"{name}.py"), *args], cwd=REPO_ROOT,
                          env=clean_env(), capture_output=True, text=True, timeout=180)


def test_eval_reports_the_final_metrics_of_the_run(reference_run, tmp_path, capsys):
    metrics = eval_tool.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, str(tmp_path)),
                              "--load", os.path.join(reference_run.out, "final.pdparams")])
    assert metrics["top1"] == reference_run.metrics["model/top1"] and metrics["count"] == 30
    assert f"top-1 {metrics['top1']:.3f}  top-5 {metrics['top5']:.3f}  images 30" in capsys.readouterr().out


def test_eval_takes_no_training_options():
    with pytest.raises(SystemExit) as stopped:
        eval_tool.parse_args(["-c", DEMO_CONFIG, "--load", "w.pdparams", "--resume", "auto"])
    assert stopped.value.code == 2
    with pytest.raises(SystemExit):  # weights are required
        eval_tool.parse_args(["-c", DEMO_CONFIG])


@pytest.mark.slow
def test_eval_and_infer_run_as_scripts(reference_run, tmp_path, capsys):
    """The scripts as typed: eval.py prints the run's top-1; infer.py prints what predict.py prints."""
    weights = os.path.join(reference_run.out, "final.pdparams")
    done = run_script("eval", "-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, str(tmp_path)),
                      "--load", weights)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"top-1 {reference_run.metrics['model/top1']:.3f}" in done.stdout and "images 30" in done.stdout
    images = os.path.join(reference_run.data_root, "val", "n00000001")
    args = [images, "-c", DEMO_CONFIG, "--load", weights, "--json", "--topk", "3"]
    done = run_script("infer", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert predict.main(args) == 0
    expected = capsys.readouterr().out.splitlines()
    assert len(expected) == 3 and done.stdout.splitlines() == expected  # 3 val images per class
