"""tools/benchmark.py data: a tiny run yields every table and JSON key (timings are not asserted)."""
import json
import os

import numpy as np
import pytest

from passl_tl import build_model
from passl_tl.benchmarks import data as benchmark_data

from tests.conftest import DEMO_CONFIG, import_tool

benchmark = import_tool("benchmark")  # tools/benchmark.py

STATS = {"median", "min", "max"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["data", "--quick", "-c", DEMO_CONFIG, "--classes-per-image", "5", "40", "--data-dir", str(out / "data"),
            "--json", str(out / "results.json")]
    returned = benchmark.main(argv)
    with open(out / "results.json", encoding="utf-8") as f:
        return returned, json.load(f), argv


def test_json_has_every_measurement(quick):
    returned, results, _ = quick
    assert results == json.loads(json.dumps(returned))
    assert set(results) == {"machine", "settings", "loader", "label_reads", "targets", "checks"}
    assert {"cpu", "cpus", "load_average", "load_average_after", "system", "python", "paddle",
            "numpy"} <= set(results["machine"])
    settings = results["settings"]
    assert [t["name"] for t in settings["transforms"]] == ["RandomHorizontalFlipWithLabel",
                                                          "RandomResizedCropWithCoords", "Normalize"]
    assert settings["classes_per_image"] == [5, 40] and settings["images"] == benchmark.QUICK["images"]
    assert [(r["labels"], r["workers"]) for r in results["loader"]] == [
        (labels, workers) for workers in (0, 1) for labels in ("none", "files", "packed")]
    assert [(r["format"], r["cache"]) for r in results["label_reads"]] == [
        ("files", "warm"), ("packed", "warm"), ("files", "cold"), ("packed", "cold")]
    for row in results["loader"]:
        assert set(row["images_per_s"]) == STATS and row["images_per_s"]["median"] > 0
    for row in results["label_reads"]:
        assert set(row["reads_per_s"]) == STATS and row["reads_per_s"]["median"] > 0
    assert [r["classes_per_image"] for r in results["targets"]] == [5, 40]
    for row in results["targets"]:
        assert set(row) == {"classes_per_image", "classes_per_map", "dense_ms", "fast_ms", "speedup", "max_abs_diff"}
        assert set(row["dense_ms"]) == set(row["fast_ms"]) == STATS
        assert row["classes_per_image"] <= row["classes_per_map"] <= row["classes_per_image"] + 1  # + ground truth
        assert 0 <= row["max_abs_diff"] <= benchmark_data.TARGETS_ATOL
    assert [c["check"] for c in results["checks"]] == [
        "token-label loader cost (files, 0 workers)", "token-label loader cost (packed, 0 workers)",
        "token-label loader cost (files, 1 workers)", "token-label loader cost (packed, 1 workers)",
        "packed / per-file label reads (warm cache)", "packed / per-file label reads (cold cache)",
        "target builder speedup (5 classes/image)", "target builder speedup (40 classes/image)"]
    for check in results["checks"]:
        assert set(check) == {"check", "value", "shown", "target", "met"} and check["met"] in (True, False)


def test_report_tables(quick, capsys):
    _, results, _ = quick
    text = benchmark_data.report(results)
    for heading in ("machine:", "loader:", "label reads:", "targets:"):
        assert heading in text
    for header in ("| labels | workers | images/s", "| format | cache | labels/s", "| classes/image |",
                   "| check "):
        assert header in text
    assert text.count("\n| ") >= 6 + 4 + 2 + 8  # a row per measurement and check
    verdicts = [line.rsplit("|", 2)[1].strip() for line in text.splitlines() if line.startswith("| token-label")]
    assert len(verdicts) == 4 and set(verdicts) <= {"yes", "NO"}
    unjudged = benchmark_data.report(results, judged=False)
    assert "checks against the targets: not judged (--quick: a smoke test" in unjudged
    assert [line.rsplit("|", 2)[1].strip() for line in unjudged.splitlines() if line.startswith("| token-label")] \
        == ["-"] * 4


def test_data_dir_is_reused(quick, tmp_path, capsys):
    _, _, argv = quick
    data_dir = argv[argv.index("--data-dir") + 1]
    before = sorted(os.listdir(data_dir))
    benchmark.main(["data", "--quick", "-c", DEMO_CONFIG, "--data-dir", data_dir, "--classes-per-image", "5"])
    assert sorted(os.listdir(data_dir)) == before
    printed = capsys.readouterr().out  # --quick: the checks are not judged, so no failure shows
    assert "checks against the targets: not judged" in printed and " NO " not in printed


def test_different_targets_are_refused(monkeypatch):
    """The timing asserts that the new builder reproduces the dense formulation."""
    real = benchmark_data.make_token_targets
    monkeypatch.setattr(benchmark_data, "make_token_targets", lambda labels, **kw: real(labels, **kw) * 1.01)
    settings = benchmark_data.DataSettings(transforms=[], target_batch=2, repeats=1, warmup=0)
    with pytest.raises(AssertionError, match="differs from the dense formulation"):
        benchmark_data.target_times(settings, classes_per_image=6)


def test_synthetic_labels():
    labels = benchmark_data.synthetic_token_labels(3, 50, 7, seed=4)
    assert labels.shape == (3, 3, 5, 18, 18) and labels.dtype == np.float32
    for sample in labels:
        assert len(np.unique(sample[1])) == 7
        assert all(len(set(sample[1, :, r, c])) == 5 for r in range(18) for c in range(18))
        assert (np.diff(sample[0], axis=0) <= 0).all()  # logits descending
        top, left, height, width = sample[2, 0, 0, :4]
        assert 0 <= top and 0 <= left and top + height <= 1 and left + width <= 1
        assert sample[2, 0, 0, 5] in sample[1]
    np.testing.assert_array_equal(labels, benchmark_data.synthetic_token_labels(3, 50, 7, seed=4))
    with pytest.raises(ValueError, match="classes_per_image"):
        benchmark_data.synthetic_token_labels(1, 50, 4)


def test_a_subcommand_is_required(capsys):
    with pytest.raises(SystemExit):
        benchmark.main([])


# ----------------------------------------------------------------------------- model part
from passl_tl.benchmarks import model as benchmark_model  # noqa: E402

PHASE_KEYS = {"images_per_s", "seconds", "warmup_seconds", "peak_rss_mb", "threads", "amp", "parameters"}
TRAIN_KEYS = PHASE_KEYS | {"loss", "hooks", "batch_stages", "last_mix_box", "grad_scaler"}


@pytest.fixture(scope="module")
def quick_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_model") / "model.json"
    returned = benchmark.main(["model", "--quick", "--threads", "1", "--json", str(out)])
    with open(out, encoding="utf-8") as f:
        return returned, json.load(f)


def test_model_json_has_every_measurement(quick_model):
    returned, results = quick_model
    assert results == json.loads(json.dumps(returned))
    assert set(results) == {"machine", "settings", "train", "eval", "checks"}
    assert {"cpu", "cpus", "load_average", "load_average_after", "paddle"} <= set(results["machine"])
    settings = results["settings"]
    assert settings["batch_size"] == benchmark.MODEL_QUICK["batch_size"] and settings["threads"] == 1
    assert settings["subprocess"] is True and settings["precision"] == "fp32"
    assert set(results["train"]) == TRAIN_KEYS and set(results["eval"]) == PHASE_KEYS | {"backend"}
    assert settings["eval_backend"] == "auto" and results["eval"]["backend"] == "onednn"  # auto on this CPU
    for phase in ("train", "eval"):
        r = results[phase]
        assert set(r["images_per_s"]) == set(r["seconds"]) == STATS and r["images_per_s"]["median"] > 0
        assert len(r["warmup_seconds"]) == settings["warmup"]
        assert r["peak_rss_mb"] > 0
        assert r["threads"]["requested"] == 1 and r["threads"]["env"]["OMP_NUM_THREADS"] == "1"
        assert r["threads"]["in_effect"] == 1  # the OpenMP runtime Paddle loaded reports the requested count
        assert r["amp"] == {"requested": "float32", "linear_output_dtypes": ["float32"], "applied": True}
    train = results["train"]
    assert train["hooks"] == ["LRSchedulerHook"]
    assert train["batch_stages"] == {"target": "TokenLabelTargets", "mixtoken": "MixToken"}
    assert np.isfinite(train["loss"])
    assert results["checks"] == []  # the targets are ratios: judged only next to the official step


def test_model_report_tables(quick_model):
    _, results = quick_model
    text = benchmark_model.report(results)
    for heading in ("machine:", "model:", "train step:", "| phase ", "| images/s | min-max"):
        assert heading in text
    assert "| train " in text and "| eval (onednn) " in text
    assert "targets: ratios to the official PyTorch step on the same machine; measure them with --official-repo" in text
    assert "| check " not in text and " NO " not in text


def test_model_train_step_is_the_trainers(monkeypatch):
    """The timed step runs Trainer.train_step and the optimizer update once per iteration (no shortcut)."""
    from passl_tl.engine.optim_wrapper import OptimWrapper
    from passl_tl.engine.trainer import Trainer
    calls = {"train_step": 0, "update": 0}
    for cls, name in ((Trainer, "train_step"), (OptimWrapper, "update")):
        real = getattr(cls, name)

        def counted(*args, _real=real, _name=name):
            calls[_name] += 1
            return _real(*args)
        monkeypatch.setattr(cls, name, counted)
    settings = benchmark_model.ModelSettings(batch_size=2, img_size=32, warmup=1, repeats=2, num_classes=10,
                                             classes_per_image=6, subprocess=False, threads=1)
    result = benchmark_model.run_phase(settings, "train")
    assert calls == {"train_step": 3, "update": 3}
    assert len(result["warmup_seconds"]) == 1 and np.isfinite(result["loss"])


def test_model_bad_settings():
    with pytest.raises(ValueError, match="precision"):
        benchmark_model.ModelSettings(precision="int8")
    with pytest.raises(SystemExit):
        benchmark.main(["model", "--precision", "int8"])


def test_model_benchmark_takes_volo():
    """A VOLO preset, shrunk by -o: the trainer's step with token targets and MixToken on its token grid, and
    the eval forward on a oneDNN predictor of its outlook attention (unfold, fold, pooling)."""
    small = {"layers": [1, 1, 1, 1], "embed_dims": [32, 64, 64, 64], "num_heads": [1, 2, 2, 2], "stem_hidden_dim": 16}
    results = benchmark.main(["model", "--quick", "--threads", "1", "--model", "volo_d1",
                              "-o", *(f"model.{k}={v}" for k, v in small.items())])
    settings, train = results["settings"], results["train"]
    model = build_model({"name": "volo_d1", "img_size": settings["img_size"], "num_classes": settings["num_classes"],
                         **small})
    assert settings["model"] == "volo_d1" and train["parameters"] == sum(int(np.prod(p.shape))
                                                                         for p in model.parameters())
    assert train["batch_stages"] == {"target": "TokenLabelTargets", "mixtoken": "MixToken"}
    assert np.isfinite(train["loss"])
    rows, cols = model.grid_size
    box = train["last_mix_box"]  # None: an empty draw
    assert box is None or (0 <= box[0] < box[2] <= rows and 0 <= box[1] < box[3] <= cols)
    assert results["eval"]["backend"] == "onednn"
    assert all(results[phase]["images_per_s"]["median"] > 0 for phase in ("train", "eval"))


# ----------------------------------------------------------------------------- exported model on each runtime
import re  # noqa: E402

from passl_tl.deploy.onnx_model import missing_packages  # noqa: E402


@pytest.mark.skipif(bool(missing_packages()), reason="paddle2onnx or onnxruntime not installed: pip install -e "
                                                      "\".[onnx]\" (the test extra has them)")
def test_model_deploy_backends_time_one_export_on_both_runtimes():
    """--deploy-backends: the model of the other phases exported once (with ONNX), its predictor timed on Paddle
    Inference and on ONNX Runtime in fresh processes with the requested threads; both give its logits."""
    results = benchmark.main(["model", "--quick", "--threads", "1", "--deploy-backends", "paddle", "onnxruntime"])
    assert results["settings"]["deploy_backends"] == ["paddle", "onnxruntime"]
    assert results["export"]["onnx"]["opset"] == 17 and results["export"]["seconds"] > 0
    assert set(results["export"]["versions"]) == {"paddle2onnx", "onnxruntime"}
    assert list(results["deploy"]) == ["paddle", "onnxruntime"]
    for backend, run in results["deploy"].items():
        assert run["backend"] == backend
        assert set(run["images_per_s"]) == set(run["seconds"]) == STATS and run["images_per_s"]["median"] > 0
        assert len(run["warmup_seconds"]) == results["settings"]["warmup"] and run["peak_rss_mb"] > 0
        assert run["threads"]["requested"] == 1 and run["threads"]["in_effect"] == 1
        assert 0 < run["threads"]["cpu_per_wall"] < 2  # one thread computing, give or take helpers
        assert 0 <= run["max_abs_diff_vs_dygraph"] < 1e-5
    text = benchmark_model.report(results)
    assert "| Paddle Inference (oneDNN) " in text and "| ONNX Runtime (CPU) " in text
    assert re.search(r"faster: (ONNX Runtime \(CPU\)|Paddle Inference \(oneDNN\)), \d+\.\d\dx ", text)


def test_model_deploy_backends_are_checked():
    with pytest.raises(ValueError, match="deploy backends must be among paddle, onnxruntime, got tensorrt"):
        benchmark_model.ModelSettings(deploy_backends=["tensorrt"])
    with pytest.raises(SystemExit):
        benchmark.main(["model", "--deploy-backends", "tensorrt"])


# ----------------------------------------------------------------------------- side by side with the official code
def official_checkout(tmp_path):
    for name in benchmark_model.OFFICIAL_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    return str(tmp_path)


def test_side_by_side_runs_interleaved_pairs_and_judges_the_ratios(monkeypatch, tmp_path):
    """--official-repo: per phase, pairs of fresh runs in alternating order; the ratio of medians per pair, the
    median pair's figures as ours, and the checks: ratios and our training peak against the official's. (The
    official side is canned here: this environment has no PyTorch; official_step.py runs in the README recipe.)"""
    order = []
    official_rates = {"train": iter([2.0, 1.0, 4.0]), "eval": iter([10.0, 10.0, 10.0])}

    def ours(settings, phase):
        order.append(("ours", phase))
        rate = 2.0 if phase == "train" else 12.0
        return {"images_per_s": {"median": rate, "min": rate, "max": rate}, "peak_rss_mb": 1000.0, "run": len(order)}

    def official(settings, phase):
        order.append(("official", phase))
        rate = next(official_rates[phase])
        return {"images_per_s": {"median": rate, "min": rate, "max": rate}, "peak_rss_mb": 1500.0,
                "official_model": "lvvit_t", "torch": "2.x", "official_commit": "9dbfd59aedecf"}

    monkeypatch.setattr(benchmark_model, "_our_phase", ours)
    monkeypatch.setattr(benchmark_model, "_official_in_subprocess", official)
    monkeypatch.setattr(benchmark_model, "check_official", lambda settings: None)
    settings = benchmark_model.ModelSettings(official_repo=official_checkout(tmp_path), pairs=3)
    results = benchmark_model.run_model_benchmark(settings)
    assert order == [(side, phase) for phase in ("train", "eval")
                     for side in ("ours", "official", "official", "ours", "ours", "official")]
    train = results["side_by_side"]["train"]
    assert [p["ratio"] for p in train["pairs"]] == [1.0, 2.0, 0.5]
    assert train["ratio"] == {"median": 1.0, "min": 0.5, "max": 2.0}
    assert results["train"] is train["median_pair"]["ours"] and results["train"]["run"] == 1
    assert all(isinstance(p[side]["load_average_at_start"], float) for p in train["pairs"] for side in ("ours", "official"))
    assert [(c["check"], c["value"], c["met"], c["comparable"]) for c in results["checks"]] == [
        ("train images/s, ours / official", 1.0, True, True), ("eval images/s, ours / official", 1.2, True, True),
        ("train peak RSS MB, ours / official's", 1000.0, True, True)]
    text = benchmark_model.side_by_side_report(results)
    assert "(lvvit_t, torch 2.x, TokenLabeling 9dbfd59): 3 interleaved pairs per phase" in text
    assert "| train | 2             | 2                 | 1.00x          | 0.50-2.00     | 1000" in text


def test_side_by_side_needs_a_checkout_an_interpreter_and_a_model_it_has(tmp_path):
    settings = dict(official_repo=str(tmp_path))
    with pytest.raises(ValueError, match=rf"--official-repo {re.escape(str(tmp_path))}: not a zihangJiang/"
                                         r"TokenLabeling checkout \(no tlt/models/lvvit.py\)"):
        benchmark_model.check_official(benchmark_model.ModelSettings(**settings))
    settings["official_repo"] = official_checkout(tmp_path)
    with pytest.raises(ValueError, match="the official step has the models lvvit_tiny, lvvit_small, lvvit_medium, "
                                         "lvvit_large, not 'volo_d1'"):
        benchmark_model.check_official(benchmark_model.ModelSettings(model="volo_d1", **settings))
    with pytest.raises(ValueError, match="the official step is timed in fp32, not bf16"):
        benchmark_model.check_official(benchmark_model.ModelSettings(precision="bf16", **settings))
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    python.chmod(0o755)
    with pytest.raises(ValueError, match=rf"--official-python {re.escape(str(python))} cannot import torch, "
                                         r"torchvision and timm \(ModuleNotFoundError: No module named 'torch'\)"):
        benchmark_model.check_official(benchmark_model.ModelSettings(official_python=str(python), **settings))
