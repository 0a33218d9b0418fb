"""End to end: training on real demo files, resume equivalence, evaluate-only, 2-process launch."""
import json
import os
import re
import shutil

import numpy as np
import paddle
import pytest

from tests.conftest import (DEMO_CONFIG, assert_same_state, fixture_path, launch_two, small_run_overrides, state,
                            train)


def test_training_writes_outputs_and_learns(reference_run):
    out, metrics = reference_run.out, reference_run.metrics
    files = set(os.listdir(out))
    assert {"log.txt", "config.yaml", "command.txt", "run_info.json", "best.pdparams", "best_model.pdparams",
            "best_ema.pdparams", "final.pdparams", "final_ema.pdparams", "vdl"} <= files
    info = json.load(open(os.path.join(out, "run_info.json")))
    assert info["command"][1].endswith(os.path.join("tools", "train.py")) and "-c" in info["command"]
    assert info["packages"]["paddlepaddle"] == paddle.__version__ and "numpy" in info["packages"]
    assert info["git"] is None or len(info["git"]["commit"]) == 40
    # written at iterations 2, 4, 5 of both epochs; the newest 4 kept
    assert sorted(f for f in files if f.endswith(".pdckpt")) == [
        "ckpt_e0000_i000005.pdckpt", "ckpt_e0001_i000002.pdckpt", "ckpt_e0001_i000004.pdckpt",
        "ckpt_e0001_i000005.pdckpt"]
    assert not [f for f in files if ".tmp" in f]
    log = open(os.path.join(out, "log.txt")).read()
    assert "epoch 1 eval (30 images)" in log
    # per-epoch LR: warmup_lr in epoch 0 (warmup applies from the start), then the cosine value
    assert re.search(r"epoch 0 \[2/5\] loss \S+ lr 3\.000e-05", log)
    assert re.search(r"epoch 1 \[2/5\] loss \S+ lr 5\.050e-04", log)
    assert metrics["model/count"] == 30 and metrics["tracked"] == "ema"
    assert metrics["model/top1"] > 30.0  # 10 classes: chance is 10%


def test_best_epoch_keeps_its_raw_model_and_its_ema(reference_run):
    """best.pdparams is the tracked EMA; best_model.pdparams the raw model of that epoch (what the official
    --finetune loads: model_best's state_dict), best_ema.pdparams its EMA; the log says which is which."""
    out = reference_run.out
    log = open(os.path.join(out, "log.txt")).read()
    epochs = re.findall(r"new best top-1 \S+ \(tracked: EMA weights; raw model \S+\) at epoch (\d): best\.pdparams "
                        r"and best_ema\.pdparams hold the EMA weights, best_model\.pdparams the raw model weights", log)
    assert epochs and epochs[0] == "0"
    assert "wrote final.pdparams (raw model weights) and final_ema.pdparams (EMA weights)" in log
    # the end-of-epoch checkpoint of the last best epoch holds the raw model and the EMA of that moment
    checkpoint = paddle.load(os.path.join(out, f"ckpt_e{int(epochs[-1]):04d}_i000005.pdckpt"))
    raw = {k: v.numpy() for k, v in checkpoint["model"].items()}
    ema = {k: v.numpy() for k, v in checkpoint["hooks"]["ema"]["ema"].items()}
    assert_same_state(state(os.path.join(out, "best_model.pdparams")), raw, "best_model.pdparams")
    assert_same_state(state(os.path.join(out, "best_ema.pdparams")), ema, "best_ema.pdparams")
    assert_same_state(state(os.path.join(out, "best.pdparams")), ema, "best.pdparams")
    assert any(not np.array_equal(raw[k], ema[k]) for k in raw if raw[k].dtype.kind == "f")


def test_visualdl_scalars_are_readable(reference_run):
    """VisualDL's own LogReader finds every scalar the trainer wrote, at its step, with its value."""
    from visualdl import LogReader
    out, metrics = reference_run.out, reference_run.metrics
    (record,) = os.listdir(os.path.join(out, "vdl"))
    reader = LogReader(file_path=os.path.join(out, "vdl", record))
    written = {}
    for tag, step, value in reference_run.scalars:
        written.setdefault(tag, []).append((step, value))
    assert set(reader.get_tags()["scalar"]) == set(written)
    for tag, expected in written.items():
        read = [(r.id, r.value) for r in reader.get_data("scalar", tag)]
        assert [step for step, _ in read] == [step for step, _ in expected], tag
        np.testing.assert_allclose([v for _, v in read], [v for _, v in expected], rtol=1e-6,  # stored as float32
                                   err_msg=tag)
    for tag in ("train/loss", "train/lr", "train/img_per_s", "val/model/top1", "val/ema/top1", "val/ema/top5"):
        assert tag in written
    assert len(written["train/loss"]) == 6  # logged at iterations 2, 4, 5 of 2 epochs
    assert written["val/ema/top1"][-1][1] == pytest.approx(metrics["ema/top1"])


@pytest.mark.parametrize("checkpoint, resumes_at, first_logged", [
    ("ckpt_e0001_i000002.pdckpt", "epoch 1, iteration 2", "epoch 1 [4/5]"),  # mid-epoch
    ("ckpt_e0000_i000005.pdckpt", "epoch 1, iteration 0", "epoch 1 [2/5]"),  # end of an epoch
])
def test_resume_matches_uninterrupted_run(reference_run, tmp_path, checkpoint, resumes_at, first_logged):
    data_root, out, metrics = reference_run.data_root, reference_run.out, reference_run.metrics
    resumed_out = str(tmp_path / "resumed")
    resumed = train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, resumed_out),
                          "--resume", os.path.join(out, checkpoint)])
    log = open(os.path.join(resumed_out, "log.txt")).read()
    assert f"continuing at {resumes_at}" in log
    logged = re.findall(r"epoch \d \[\d/5\]", log)
    assert logged[0] == first_logged and "epoch 0" not in " ".join(logged)  # nothing done twice
    # epoch 0's best is in the state, its weights only in the first run's output dir
    assert re.search(r"resumed with a best top-1 of \S+, but \S+ has no best\.pdparams, best_model\.pdparams, "
                     r"best_ema\.pdparams: the best weights are written only when top-1 exceeds", log)
    for name in ("final.pdparams", "final_ema.pdparams"):
        assert_same_state(state(os.path.join(out, name)), state(os.path.join(resumed_out, name)), name)
    assert resumed["model/top1"] == metrics["model/top1"] and resumed["ema/top1"] == metrics["ema/top1"]


def test_evaluate_only_reproduces_final_metrics(reference_run, tmp_path, capsys):
    data_root, out, metrics = reference_run.data_root, reference_run.out, reference_run.metrics
    # a copy of the val split alone, read as plain ImageNet layout: the training split cannot be read
    shutil.copytree(os.path.join(data_root, "val"), tmp_path / "val")
    shutil.copy(os.path.join(data_root, "classes.txt"), tmp_path / "classes.txt")
    config = tmp_path / "eval.yaml"
    config.write_text(f"""_base_: {DEMO_CONFIG}
data:
  train: {{name: ImageNetTokenLabel, root: /nonexistent/train}}
  val:
    name: ImageNetTokenLabel
    root: {tmp_path / 'val'}
    class_list: {tmp_path / 'classes.txt'}
    transforms: [{{name: ResizeCropPct, size: 64, crop_pct: 1.0}}, {{name: Normalize}}]
""")
    result = train.main(["-c", str(config), "--load", os.path.join(out, "final.pdparams"), "--evaluate-only"])
    assert result["top1"] == metrics["model/top1"] and result["count"] == 30
    assert f"top-1 {result['top1']:.3f}" in capsys.readouterr().out


def test_evaluate_only_accepts_an_official_checkpoint(reference_run, capsys):
    """--evaluate-only --load takes an official PyTorch checkpoint directly (no conversion step)."""
    data_root = reference_run.data_root
    official = fixture_path("lvvit_t_d2.pth")  # LV-ViT-T layout, depth 2, 10 classes, 224 x 224
    result = train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, "unused"),
                         "model.img_size=224", "model.patch_size=16", "model.embed_dim=240", "model.depth=2",
                         "model.num_heads=4", "--load", official, "--evaluate-only"])  # crops follow img_size
    assert result["count"] == 30 and 0.0 <= result["top1"] <= 100.0
    assert "top-1" in capsys.readouterr().out


def test_amp_switch_is_accepted(reference_run, tmp_path):
    """AMP is a config switch; on CPU Paddle runs the autocast region in fp32 and says so."""
    data_root = reference_run.data_root
    out = str(tmp_path / "amp")
    with pytest.warns(UserWarning, match="amp_guard"):
        metrics = train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, out, epochs=1),
                              "amp.enable=true", "amp.dtype=bfloat16"])
    log = open(os.path.join(out, "log.txt")).read()
    losses = [float(line.split(" loss ")[1].split()[0]) for line in log.splitlines() if " loss " in line]
    assert losses and all(np.isfinite(losses)) and metrics["model/count"] == 30


def logged_losses(out_dir: str) -> list[str]:
    return [line.split(" loss ")[1].split()[0] for line in open(os.path.join(out_dir, "log.txt")).read().splitlines()
            if " loss " in line]


@pytest.mark.slow
def test_compiled_run_matches_the_eager_run(reference_run, tmp_path):
    """``compile=true`` on the reference run's recipe (drop path, MixToken, EMA, 10 steps): the same logged losses
    and final weights to 5e-5 (Adam's normalised update amplifies the compiled backward's float rounding, most
    in the conv stem's BatchNorm); its evaluation runs on the shared (eager) weights."""
    out = str(tmp_path / "compiled")
    metrics = train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, out), "compile=true"])
    assert logged_losses(out) == logged_losses(reference_run.out) and len(logged_losses(out)) == 6
    eager, compiled = state(os.path.join(reference_run.out, "final.pdparams")), state(os.path.join(out, "final.pdparams"))
    assert eager.keys() == compiled.keys()
    for key in eager:
        np.testing.assert_allclose(compiled[key], eager[key], rtol=0, atol=5e-5, err_msg=key)
    assert metrics["model/count"] == 30


@pytest.mark.slow
def test_compiled_step_with_amp_on_the_cpu_runs_float32(reference_run, tmp_path, caplog):
    """Eager autocast leaves a CPU step in float32; the compiled step does the same (a program would cast, and the
    CPU has no half-precision BatchNorm) and says so."""
    out = str(tmp_path / "compiled_amp")
    with pytest.warns(UserWarning, match="amp_guard"):
        train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(reference_run.data_root, out, epochs=1),
                    "compile=true", "amp.enable=true", "amp.dtype=bfloat16"])
    assert logged_losses(out) == logged_losses(reference_run.out)[:3]
    assert "the compiled step runs in float32" in open(os.path.join(out, "log.txt")).read()


def test_mixup_cutmix_and_accumulation_train(reference_run, tmp_path):
    """The optional recipe switches on a real run: Mixup/CutMix on token-label targets and
    gradient accumulation (5 iterations with accumulate_steps=2 -> 3 optimizer steps)."""
    data_root = reference_run.data_root
    out = str(tmp_path / "mix")
    metrics = train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, out, epochs=1),
                          "batch.mixup={name: Mixup, mixup_alpha: 0.8, cutmix_alpha: 1.0}",
                          "optim_wrapper.accumulate_steps=2"])
    assert metrics["model/count"] == 30
    state = paddle.load(os.path.join(out, "ckpt_e0000_i000005.pdckpt"))
    steps = [v for k, v in state["optimizer"].items() if k.endswith("beta1_pow_acc_0")]
    # Paddle keeps beta1 ** (steps + 1): 3 steps -> 0.9 ** 4 (5 unaccumulated steps would be 0.9 ** 6)
    assert steps and all(np.isclose(float(v.numpy().ravel()[0]), 0.9 ** 4) for v in steps)


def test_finetune_at_higher_resolution_on_other_classes(reference_run, tmp_path):
    """--load the best epoch's raw model (as the README's fine-tuning does) of a 10-class 64 x 64 model
    into a 5-class 96 x 96 one: pos_embed resized, heads reset. No EMA, as in the official fine-tuning:
    best.pdparams alone is the raw model, no best_model / best_ema / final_ema files."""
    out = reference_run.out
    ft_out, ft_data = str(tmp_path / "ft"), str(tmp_path / "demo5")
    metrics = train.main([
        "-c", DEMO_CONFIG, "-o", *small_run_overrides(ft_data, ft_out, epochs=1),
        *[f"data.{split}.num_classes=5" for split in ("train", "val")], "model.num_classes=5",
        "model.img_size=96", "hooks.ema=null",  # classes, crops and token labels follow the model
        "--load", os.path.join(out, "best_model.pdparams"), "--reset-head"])
    log = open(os.path.join(ft_out, "log.txt")).read()
    assert "resized backbone.pos_embed from 8x8 to 12x12" in log
    assert "head.cls_head.weight" in log and metrics["model/count"] == 15
    assert metrics["tracked"] == "model"
    assert re.search(r"new best top-1 \S+ \(tracked: raw model; no EMA\) at epoch 0: best\.pdparams holds the raw "
                     r"model", log)
    assert "wrote final.pdparams (raw model weights; no EMA in this run)" in log
    files = set(os.listdir(ft_out))
    assert {"best.pdparams", "final.pdparams"} <= files
    assert not files & {"best_model.pdparams", "best_ema.pdparams", "final_ema.pdparams"}
    assert_same_state(state(os.path.join(ft_out, "best.pdparams")), state(os.path.join(ft_out, "final.pdparams")),
                      "best.pdparams of a 1-epoch run")


@pytest.mark.parametrize("backbone, track", [
    ("{name: DeiT, embed_dim: 48, depth: 2, num_heads: 2, img_size: 64, patch_size: 8, drop_path_rate: 0.1}",
     "model"),  # the DeiT recipe tracks its raw model
    ("{name: T2TViT, embed_dim: 48, depth: 2, num_heads: 2, img_size: 64, tokens_type: transformer,"
     " drop_path_rate: 0.1}", "ema"),
])
def test_token_labeling_trains_deit_and_t2t(reference_run, tmp_path, backbone, track):
    """The token-label head, MixToken and the token-label data unchanged on other ViT families; the
    best files follow the tracked weights (1 epoch: the best epoch is the last)."""
    data_root = reference_run.data_root
    config = tmp_path / "tl.yaml"
    config.write_text(f"""_base_: {DEMO_CONFIG}
model:
  _delete_: true
  name: Classifier
  backbone: {backbone}
  head: {{name: TokenLabelHead, num_classes: 10}}
""")
    out = str(tmp_path / "out")
    overrides = [o for o in small_run_overrides(data_root, out, epochs=1) if not o.startswith("model.")]
    metrics = train.main(["-c", str(config), "-o", *overrides, f"hooks.evaluate.track={track}"])
    log = open(os.path.join(out, "log.txt")).read()
    assert metrics["model/count"] == 30 and "epoch 0 [5/5]" in log
    kept = {"model": "best.pdparams and best_model.pdparams hold the raw model weights, best_ema.pdparams the EMA",
            "ema": "best.pdparams and best_ema.pdparams hold the EMA weights, best_model.pdparams the raw model"}
    assert kept[track] in log
    final = {"model": state(os.path.join(out, "final.pdparams")), "ema": state(os.path.join(out, "final_ema.pdparams"))}
    assert_same_state(state(os.path.join(out, "best_model.pdparams")), final["model"], "best_model.pdparams")
    assert_same_state(state(os.path.join(out, "best_ema.pdparams")), final["ema"], "best_ema.pdparams")
    assert_same_state(state(os.path.join(out, "best.pdparams")), final[track], "best.pdparams")


@pytest.mark.slow
def test_two_process_launch_trains_and_counts_each_val_image_once(reference_run, tmp_path):
    data_root, out, metrics = reference_run.data_root, reference_run.out, reference_run.metrics
    dist_out = str(tmp_path / "dist")
    _, logs = launch_two([train.__file__, "-c", DEMO_CONFIG, "-o",
                          *small_run_overrides(data_root, dist_out, epochs=1, workers=1), "data.batch_size=8"],
                         tmp_path / "log_train", timeout=600)
    assert "(x2 procs)" in logs[0] and "epoch 0 eval (30 images)" in logs[0]
    # each process trained on its own shard; gradient averaging kept the replicas identical
    fingerprints = [re.search(r"weights fingerprint (\S+)", logs[r]).group(1) for r in (0, 1)]
    assert fingerprints[0] == fingerprints[1]
    assert "[5/5]" in logs[0]  # 80 images / (8 per process x 2 processes)
    assert os.path.exists(os.path.join(dist_out, "final.pdparams"))
    # the compiled step under DataParallel: replicas in sync, and the eager launch's weights
    compiled_out = str(tmp_path / "dist_compiled")
    _, logs = launch_two([train.__file__, "-c", DEMO_CONFIG, "-o", *small_run_overrides(
        data_root, compiled_out, epochs=1, workers=1), "data.batch_size=8", "compile=true"],
        tmp_path / "log_compiled", timeout=600)
    assert len({re.search(r"weights fingerprint (\S+)", logs[r]).group(1) for r in (0, 1)}) == 1
    eager, compiled = state(os.path.join(dist_out, "final.pdparams")), state(os.path.join(compiled_out, "final.pdparams"))
    for key in eager:  # as test_compiled_run_matches_the_eager_run
        np.testing.assert_allclose(compiled[key], eager[key], rtol=0, atol=5e-5, err_msg=key)
    # evaluation sharded over 2 processes equals the single-process result
    eval_overrides = small_run_overrides(data_root, str(tmp_path / "eval"))
    _, logs = launch_two([train.__file__, "-c", DEMO_CONFIG, "-o", *eval_overrides, "--evaluate-only",
                          "--load", os.path.join(out, "final.pdparams")], tmp_path / "log_eval", timeout=600)
    assert f"top-1 {metrics['model/top1']:.3f}" in logs[0] and "images 30" in logs[0]
