"""Bad configs and command lines: each is an error naming the culprit, raised before any heavy work
(config errors before the model is built, data/model mismatches before the first training step)."""
import os
import subprocess
import sys
import time

import paddle
import pytest

from passl_tl.models import create_model
from passl_tl.utils.config import ConfigError

from tests.conftest import DEMO_CONFIG, REPO_ROOT, small_run_overrides, train


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fails the test if the model is built or training is set up."""
    def reached(*args, **kwargs):
        raise AssertionError("heavy work started before the error")
    monkeypatch.setattr(train, "build_model", reached)
    monkeypatch.setattr(train.Trainer, "from_config", reached)


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if a training step runs."""
    def reached(self, batch):
        raise AssertionError("a training step ran before the error")
    monkeypatch.setattr(train.Trainer, "train_step", reached)


def run(tmp_path, *extra, overrides=()):
    out = str(tmp_path / "out")
    return train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(str(tmp_path / "demo"), out), *overrides,
                       *extra])


@pytest.mark.parametrize("override, message", [
    ("optimizer.lrr=1e-3", r"unknown key 'lrr' in optimizer of .*lvvit_demo\.yaml for AdamW; accepted keys:.*\blr\b"),
    ("hooks.logger.intervall=5", r"unknown key 'intervall' in hooks\.logger of .*; accepted keys: interval"),
    ("data.train.transforms.0.prob=x", r"data\.train\.transforms\.0\.prob"),
    ("data.nope.x=1", r"'data\.nope'"),
    ("data.batch_size=sixteen", r"data\.batch_size.*int"),
    ("epochs=2.5", r"epochs.*int"),
    # the training step is the trainer's: there is no hook to remove, and nothing else can take it away
    ("hooks.optimizer=null", r"key 'optimizer' does not exist.*accepted keys: lr_scheduler, logger, evaluate"),
    ("optim_wrapper=null", r"optim_wrapper of .*lvvit_demo\.yaml must be a mapping .*got None"),
    ("batch.shuffle={name: Mixup}", r"unknown batch stage 'shuffle' .*in the order they run: target, mixup, teacher, "
                                    r"mixtoken"),
])
def test_bad_override_names_the_key(tmp_path, no_heavy_work, override, message):
    with pytest.raises(ConfigError, match=message):
        run(tmp_path, overrides=[override])


DEMO = r" in .*lvvit_demo\.yaml: expected "
FINITE = "a finite number"
# Values that cannot be right: each an error naming the key path, the value, what is expected and the file, raised
# before the model (or data) is built. The top-level numbers are checked by the run config, component mappings by
# the registry against their constructors' annotations, the model mapping through its backbone's and head's.
BAD_VALUES = [
    # learning rates: the optimizer's and the scheduler's
    ("optimizer.lr=nan", rf"optimizer\.lr = nan{DEMO}{FINITE} >= 0 \(AdamW\)"),
    ("optimizer.lr=inf", rf"optimizer\.lr = inf{DEMO}{FINITE} >= 0 \(AdamW\)"),
    ("optimizer.lr=-1e-3", rf"optimizer\.lr = -0\.001{DEMO}{FINITE} >= 0 \(AdamW\)"),
    ("lr_scheduler.warmup_lr=-1e-6", rf"lr_scheduler\.warmup_lr = -1e-06{DEMO}{FINITE} >= 0 \(CosineWarmup\)"),
    ("lr_scheduler.min_lr=nan", rf"lr_scheduler\.min_lr = nan{DEMO}{FINITE} >= 0 \(CosineWarmup\)"),
    ("lr_scheduler.min_lr=-inf", rf"lr_scheduler\.min_lr = -inf{DEMO}{FINITE} >= 0"),
    # run length, batches, loader
    ("epochs=0", rf"epochs = 0{DEMO}an int >= 1"),
    ("epochs=-3", rf"epochs = -3{DEMO}an int >= 1"),
    ("epochs=null", rf"epochs = None{DEMO}an int >= 1"),
    ("data.batch_size=0", rf"data\.batch_size = 0{DEMO}an int >= 1"),
    ("data.val_batch_size=0", rf"data\.val_batch_size = 0{DEMO}an int >= 1"),
    ("data.num_workers=-1", rf"data\.num_workers = -1{DEMO}an int >= 0"),
    ("data.repeated_augmentation=0", rf"data\.repeated_augmentation = 0{DEMO}an int >= 1"),
    ("seed=-1", rf"seed = -1{DEMO}an int >= 0"),
    ("threads=-2", rf"threads = -2{DEMO}an int >= 0"),
    ("amp.init_loss_scaling=0", rf"amp\.init_loss_scaling = 0\.0{DEMO}{FINITE} > 0"),
    # hooks
    ("hooks.checkpoint.interval=0", rf"hooks\.checkpoint\.interval = 0{DEMO}an int >= 1 \(CheckpointHook\)"),
    ("hooks.checkpoint.interval_iters=-2", rf"hooks\.checkpoint\.interval_iters = -2{DEMO}an int >= 0"),
    ("hooks.checkpoint.keep_last=-1", rf"hooks\.checkpoint\.keep_last = -1{DEMO}an int >= 0"),
    ("hooks.checkpoint.save_best=1", rf"hooks\.checkpoint\.save_best = 1{DEMO}true or false"),
    ("hooks.logger.interval=0", rf"hooks\.logger\.interval = 0{DEMO}an int >= 1 \(LoggerHook\)"),
    ("hooks.logger.visualdl=maybe", rf"hooks\.logger\.visualdl = 'maybe'{DEMO}true or false"),
    ("hooks.evaluate.interval=0", rf"hooks\.evaluate\.interval = 0{DEMO}an int >= 1 \(EvaluateHook\)"),
    ("hooks.evaluate.track=best", rf"hooks\.evaluate\.track = 'best'{DEMO}one of 'ema', 'model'"),
    ("hooks.ema.decay=1.5", rf"hooks\.ema\.decay = 1\.5{DEMO}{FINITE} in \[0, 1\] \(EMAHook\)"),
    ("hooks.ema.decay=-0.1", rf"hooks\.ema\.decay = -0\.1{DEMO}{FINITE} in \[0, 1\]"),
    # optimizer and the update
    ("optimizer.weight_decay=-0.05", rf"optimizer\.weight_decay = -0\.05{DEMO}{FINITE} >= 0"),
    ("optimizer.weight_decay=nan", rf"optimizer\.weight_decay = nan{DEMO}{FINITE} >= 0"),
    ("optimizer.eps=0", rf"optimizer\.eps = 0{DEMO}{FINITE} > 0"),
    ("optimizer.betas=[0.9, 1.0]", rf"optimizer\.betas = \[0\.9, 1\.0\]{DEMO}a list of 2 \[{FINITE} in \[0, 1\)"),
    ("optimizer.clip_grad=big", rf"optimizer\.clip_grad = 'big'{DEMO}{FINITE} >= 0 or null"),
    ("optim_wrapper.accumulate_steps=0", rf"optim_wrapper\.accumulate_steps = 0{DEMO}an int >= 1 \(OptimWrapper\)"),
    ("optim_wrapper.max_nonfinite_steps=-1", rf"optim_wrapper\.max_nonfinite_steps = -1{DEMO}an int >= 0"),
    ("lr_scheduler.warmup_epochs=-1", rf"lr_scheduler\.warmup_epochs = -1{DEMO}an int >= 0 \(CosineWarmup\)"),
    ("lr_scheduler.cooldown_epochs=-1", rf"lr_scheduler\.cooldown_epochs = -1{DEMO}an int >= 0"),
    ("lr_scheduler.warmup_epochs=1.5", r"lr_scheduler\.warmup_epochs.*int"),
    # the model (a preset: its backbone's and head's arguments)
    ("model.drop_path_rate=1.0", rf"model\.drop_path_rate = 1\.0{DEMO}{FINITE} in \[0, 1\) \(LVViT\)"),
    ("model.drop_path_rate=-0.1", rf"model\.drop_path_rate = -0\.1{DEMO}{FINITE} in \[0, 1\)"),
    ("model.drop_rate=1.5", rf"model\.drop_rate = 1\.5{DEMO}{FINITE} in \[0, 1\)"),
    ("model.attn_drop_rate=.nan", rf"model\.attn_drop_rate = nan{DEMO}{FINITE} in \[0, 1\)"),  # a new key: YAML's nan
    ("model.attn_drop_rate=nan", rf"model\.attn_drop_rate = 'nan'{DEMO}{FINITE} in \[0, 1\)"),  # ... else a string
    ("model.img_size=0", rf"model\.img_size = 0{DEMO}an int >= 1 or a list of 2"),
    ("model.num_classes=0", rf"model\.num_classes = 0{DEMO}an int >= 1 \(TokenLabelHead\)"),
    ("model.patch_size=0", rf"model\.patch_size = 0{DEMO}an int >= 1"),
    ("model.depth=0", rf"model\.depth = 0{DEMO}an int >= 1"),
    ("model.dense_weight=-1", rf"model\.dense_weight = -1\.0{DEMO}{FINITE} >= 0"),
    ("model.ground_truth=1", r"model\.ground_truth.*bool"),  # the override's own type check
    # batch stages
    ("batch.target.smoothing=1.0", rf"batch\.target\.smoothing = 1\.0{DEMO}{FINITE} in \[0, 1\) \(TokenLabelTargets\)"),
    ("batch.target.smoothing=-0.1", rf"batch\.target\.smoothing = -0\.1{DEMO}{FINITE} in \[0, 1\)"),
    ("batch.target.box_order=sideways", rf"batch\.target\.box_order = 'sideways'{DEMO}one of 'correct', 'official'"),
    ("batch.mixup={name: Mixup, mixup_alpha: -0.5}", rf"batch\.mixup\.mixup_alpha = -0\.5{DEMO}{FINITE} >= 0 \(Mixup\)"),
    ("batch.mixup={name: Mixup, cutmix_alpha: -1}", rf"batch\.mixup\.cutmix_alpha = -1{DEMO}{FINITE} >= 0"),
    ("batch.mixup={name: Mixup, prob: 1.5}", rf"batch\.mixup\.prob = 1\.5{DEMO}{FINITE} in \[0, 1\]"),
    ("batch.mixup={name: Mixup, cutmix_minmax: [0.2]}", rf"batch\.mixup\.cutmix_minmax = \[0\.2\]{DEMO}a list of 2"),
    ("batch.mixtoken={name: MixToken, alpha: 0}", rf"batch\.mixtoken\.alpha = 0{DEMO}{FINITE} > 0 \(MixToken\)"),
    ("batch.mixtoken={name: MixToken, box_seeds: [1, -1]}", rf"batch\.mixtoken\.box_seeds = \[1, -1\]{DEMO}"
                                                            rf"a list \(each an int >= 0\) or null"),
    # data: datasets and transforms
    ("data.train.num_classes=0", rf"data\.train\.num_classes = 0{DEMO}an int >= 1 \(DemoTokenLabel\)"),
    ("data.train.image_size=-64", rf"data\.train\.image_size = -64{DEMO}an int >= 1"),
    ("data.val.split=test", rf"data\.val\.split = 'test'{DEMO}one of 'train', 'val'"),
    ("data.train.bad_image=ignore", rf"data\.train\.bad_image = 'ignore'{DEMO}one of 'error', 'skip'"),
    ("data.train.transforms.0.prob=1.5", rf"data\.train\.transforms\.0\.prob = 1\.5{DEMO}{FINITE} in \[0, 1\] "
                                         rf"\(RandomHorizontalFlipWithLabel\)"),
    ("data.train.transforms.1.scale=[0.5, -1]", rf"data\.train\.transforms\.1\.scale = \[0\.5, -1\]{DEMO}a list of 2"),
    ("data.train.transforms.1.interpolation=nearest", rf"data\.train\.transforms\.1\.interpolation = 'nearest'{DEMO}"
                                                      rf"one of 'bilinear', 'bicubic', 'random'"),
    ("data.val.transforms.0.crop_pct=0", rf"data\.val\.transforms\.0\.crop_pct = 0\.0{DEMO}{FINITE} in \(0, 2\]"),
    ("data.val.transforms.0.size=0", rf"data\.val\.transforms\.0\.size = 0{DEMO}an int >= 1 \(ResizeCropPct\)"),
    ("data.val.transforms.1.std=[0.2, 0.2]", rf"data\.val\.transforms\.1\.std = \[0\.2, 0\.2\]{DEMO}a list of 3"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES)
def test_a_value_that_cannot_be_right_fails_before_the_model_is_built(tmp_path, no_heavy_work, override, message):
    started = time.monotonic()
    with pytest.raises(ConfigError, match=message):
        run(tmp_path, overrides=[override])
    assert time.monotonic() - started < 2.0  # the config alone: nothing built, no data written
    assert not os.path.exists(tmp_path / "demo") and not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("text, message", [
    ("hooks:\n  checkpoint: {name: CheckpointHook, interval: one}\n",
     r"hooks\.checkpoint\.interval = 'one' in .*bad\.yaml: expected an int >= 1 \(CheckpointHook\)"),
    ("hooks:\n  checkpoint: {name: CheckpointHook, keep_last: true}\n",  # a bool is not an int
     r"hooks\.checkpoint\.keep_last = True in .*bad\.yaml: expected an int >= 0"),
    ("epochs: 2.0\n", r"epochs = 2\.0 in .*bad\.yaml: expected an int >= 1"),
    ("compile: 1\n", r"'compile: 1' in .*bad\.yaml should be a bool \(default False\)"),
    ("model: {drop_path_rate: .nan}\n", r"model\.drop_path_rate = nan in .*bad\.yaml: expected a finite number in \[0, 1\)"),
    ("optimizer: {lr: -.inf}\n", r"optimizer\.lr = -inf in .*bad\.yaml: expected a finite number >= 0"),
    ("data:\n  train: {transforms: [{name: Normalize, mean: [0.5, 0.5, x]}]}\n",
     r"data\.train\.transforms\.0\.mean = \[0\.5, 0\.5, 'x'\] in .*bad\.yaml: expected a list of 3 \[a number"),
])
def test_a_wrong_value_in_a_config_file_names_key_value_and_file(tmp_path, no_heavy_work, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(f"_base_: {DEMO_CONFIG}\n{text}")
    with pytest.raises(ConfigError, match=message):
        train.main(["-c", str(config)])


@pytest.mark.parametrize("base_text, child_text, where", [
    ("epochs: 3\n", "epochs: 4\noptimizer: {lr: 1.0e-3}\nepochs: 5\n", r"child\.yaml, line 4 \(first at line 2\)"),
    ("optimizer:\n  lr: 1.0e-3\n  weight_decay: 0.1\n  lr: 2.0e-3\n", "", r"base\.yaml, line 5 \(first at line 3\)"),
])
def test_a_key_written_twice_in_a_config_file_is_an_error(tmp_path, no_heavy_work, base_text, child_text, where):
    base = tmp_path / "base.yaml"
    base.write_text(f"_base_: {DEMO_CONFIG}\n{base_text}")
    child = tmp_path / "child.yaml"
    child.write_text(f"_base_: base.yaml\n{child_text}")
    with pytest.raises(ConfigError, match=rf"duplicate key '(epochs|lr)' in .*{where}"):
        train.main(["-c", str(child)])


@pytest.mark.parametrize("hook, moved_to", [
    ("{name: OptimizerHook, accumulate_steps: 2}", r"optim_wrapper \(accumulate_steps"),
    ("{name: MixTokenHook}", r"batch\.mixtoken"), ("{name: MixupHook}", r"batch\.mixup"),
    ("{name: DistillationHook, teacher: {}, weights: w}", r"batch\.teacher"),
])
def test_a_step_or_batch_hook_in_a_config_says_where_it_went(tmp_path, no_heavy_work, hook, moved_to):
    config = tmp_path / "old.yaml"
    config.write_text(f"_base_: {DEMO_CONFIG}\nhooks:\n  old: {hook}\n")
    with pytest.raises(ConfigError, match=rf"hooks\.old .* in .*old\.yaml: the training step and the batch are the "
                                          rf"trainer's, not hooks; configure {moved_to}"):
        train.main(["-c", str(config)])


def test_unknown_key_in_a_config_file_names_file_and_key(tmp_path, no_heavy_work):
    config = tmp_path / "bad.yaml"
    config.write_text(f"_base_: {DEMO_CONFIG}\nhooks:\n  checkpoint: {{name: CheckpointHook, keep_lats: 2}}\n")
    with pytest.raises(ConfigError, match=r"keep_lats.*bad\.yaml|bad\.yaml.*keep_lats"):
        train.main(["-c", str(config)])


@pytest.mark.parametrize("args, message", [
    (["-c", "/no/such/config.yaml"], "/no/such/config.yaml"),
    (["-c", DEMO_CONFIG, "--load", "/no/such/weights.pdparams"], "--load /no/such/weights.pdparams: no such file"),
    (["-c", DEMO_CONFIG, "--resume", "/no/such/ckpt.pdckpt"], "--resume /no/such/ckpt.pdckpt: no such file"),
])
def test_missing_paths_are_named(no_heavy_work, args, message):
    with pytest.raises((OSError, ConfigError), match=message):
        train.main(args)


def test_missing_data_root_is_named(tmp_path, no_training):
    config = tmp_path / "imagenet.yaml"
    config.write_text(f"_base_: {DEMO_CONFIG}\ndata:\n  train: {{name: ImageNetTokenLabel, root: /no/such/imagenet, "
                      f"label_root: /no/such/labels}}\n")
    with pytest.raises(OSError, match="/no/such/imagenet"):
        train.main(["-c", str(config), "-o", f"output_dir={tmp_path / 'out'}"])


def test_num_classes_mismatch_between_model_and_data(tmp_path, no_training):
    with pytest.raises(ConfigError, match=r"has 10 classes but the model has num_classes=12"):
        run(tmp_path, overrides=["model.num_classes=12"])
    with pytest.raises(ConfigError, match=r"unknown key 'num_classes' in batch.target.*accepted keys: smoothing"):
        run(tmp_path, overrides=["batch.target.num_classes=12"])  # the target stage takes the model's


def test_weights_of_another_architecture(tmp_path, no_training):
    weights = str(tmp_path / "deit.pdparams")
    paddle.save(create_model("deit_tiny_patch16_224", depth=1, num_classes=10).state_dict(), weights)
    with pytest.raises(ValueError, match=rf"cannot load {weights} into Classifier; missing keys: backbone\."):
        run(tmp_path, "--load", weights)


def test_cli_reports_one_line_and_exit_code_2(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"), "-c", DEMO_CONFIG,
                           "-o", "optimizer.lrr=1"], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in done.stderr
    assert "unknown key 'lrr' in optimizer" in done.stderr


def test_cli_reports_a_value_that_cannot_be_right_in_one_line_with_exit_code_2(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"), "-c", DEMO_CONFIG,
                           "-o", f"output_dir={out}", "epochs=1", "data.val_batch_size=0"],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: data.val_batch_size = 0 in ")
    assert not out.exists()  # stopped before the run wrote anything


def test_seed_option_is_checked_as_the_config_s_seed(tmp_path):
    with pytest.raises(ConfigError, match=r"seed = -1 in .*lvvit_demo\.yaml: expected an int >= 0"):
        train.main(["-c", DEMO_CONFIG, "-o", f"output_dir={tmp_path / 'out'}", "--seed", "-1"])
    assert not (tmp_path / "out").exists()


def test_label_size_above_the_label_maps(tmp_path, no_training):
    """The demo's label maps are 18 x 18; a 20 x 20 token grid would sample them finer than they were made."""
    finer = ["model.img_size=160"]  # 20 x 20 tokens of 8 px
    with pytest.raises(ConfigError, match=r"20x20 token grid .* finer than the 18x18 label maps of data\.train .*"
                                          r"upsample_labels: true"):
        run(tmp_path, overrides=finer)
    allowed = [*finer, "batch.target.upsample_labels=true"]
    with pytest.raises(AssertionError, match="a training step ran"):  # with the option, training starts
        run(tmp_path, overrides=allowed)
