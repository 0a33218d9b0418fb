"""Bad configs and command lines: each is an error naming the culprit, raised before any heavy work
(config errors before the model is built, data/model mismatches before the first training step)."""
import os
import subprocess
import sys

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


def test_label_size_above_the_label_maps(tmp_path, no_training):
    """The demo's label maps are 18 x 18; a 20 x 20 token grid would sample them finer than they were made."""
    finer = ["model.img_size=160"]  # 20 x 20 tokens of 8 px
    with pytest.raises(ConfigError, match=r"20x20 token grid .* finer than the 18x18 label maps of data\.train .*"
                                          r"upsample_labels: true"):
        run(tmp_path, overrides=finer)
    allowed = [*finer, "batch.target.upsample_labels=true"]
    with pytest.raises(AssertionError, match="a training step ran"):  # with the option, training starts
        run(tmp_path, overrides=allowed)
