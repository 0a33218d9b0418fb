"""DeiT's distillation loss (DistillationHead) against the official values and gradients, and the
DistillationHook with real teachers (official DeiT and RegNetY checkpoints, an LV-ViT saved as
.pdparams).

Tolerances from the fixture README: losses atol 1e-5, logits atol 1e-5, gradients rtol 1e-4
relative to each gradient's scale.
"""
import os
import sys
from types import SimpleNamespace

import numpy as np
import paddle
import pytest
import yaml
from conftest import REPO_ROOT, fixture_path, load_npz

from passl_tl.datasets.demo import make_demo_dataset
from passl_tl.engine.hooks import DistillationHook, MixupHook
from passl_tl.models import create_model
from passl_tl.models.heads import DistillationHead
from passl_tl.utils.registry import HOOKS, ConfigError

LOSSES = {"none": dict(distillation_type="none"), "hard": dict(distillation_type="hard"),
          "soft_tau1": dict(distillation_type="soft", tau=1.0), "soft_tau3": dict(distillation_type="soft", tau=3.0)}


@pytest.fixture(scope="module")
def ref():
    return load_npz("deit_tiny_distilled_d2.npz")


def logits(ref):
    x_cls, x_dist = (paddle.to_tensor(ref[k], stop_gradient=False) for k in ("train/x_cls", "train/x_dist"))
    return {"cls": x_cls, "dist": x_dist}


def target(ref):
    return {"soft": paddle.to_tensor(ref["loss/soft_target"]), "teacher": paddle.to_tensor(ref["loss/teacher_logits"])}


def scaled_close(actual, expected, rtol=1e-4):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("variant", list(LOSSES))
def test_loss_value_and_logit_gradients(ref, variant):
    head = DistillationHead(8, 10, alpha=0.5, **LOSSES[variant])
    outputs = logits(ref)
    loss = head.loss(outputs, target(ref))
    np.testing.assert_allclose(float(loss), float(ref[f"loss/{variant}"]), rtol=0, atol=1e-5)
    loss.backward()
    scaled_close(outputs["cls"].grad.numpy(), ref[f"loss/{variant}/grad_x_cls"])
    dist_grad = outputs["dist"].grad
    expected = ref[f"loss/{variant}/grad_x_dist"]
    if variant == "none":  # the dist head is unused
        assert dist_grad is None and not expected.any()
    else:
        scaled_close(dist_grad.numpy(), expected)


@pytest.mark.parametrize("variant", ["soft_tau1", "soft_tau3"])
def test_soft_distillation_term_is_not_lost(ref, variant):
    """The distillation half of the soft loss is a real share of the recorded value (a port whose
    KL term vanishes would give about half the base loss)."""
    term = (float(ref[f"loss/{variant}"]) - 0.5 * float(ref["loss/none"])) / 0.5
    assert term > 0.05
    head = DistillationHead(8, 10, **LOSSES[variant])
    base = DistillationHead(8, 10, distillation_type="none").loss(logits(ref), target(ref))
    np.testing.assert_allclose((float(head.loss(logits(ref), target(ref))) - 0.5 * float(base)) / 0.5, term,
                               rtol=0, atol=2e-5)


def test_distillation_type_none_is_the_plain_deit_loss():
    ref = load_npz("deit_tiny_d2.npz")
    x_cls = paddle.to_tensor(ref["train/x_cls"], stop_gradient=False)
    head = DistillationHead(8, 10, distillation_type="none")
    loss = head.loss({"cls": x_cls, "dist": paddle.zeros_like(x_cls)}, paddle.to_tensor(ref["loss/soft_target"]))
    np.testing.assert_allclose(float(loss), float(ref["loss/none"]), rtol=0, atol=1e-5)
    loss.backward()
    scaled_close(x_cls.grad.numpy(), ref["loss/none/grad_x_cls"])


def test_target_forms_and_errors(ref):
    soft = paddle.to_tensor(ref["loss/soft_target"])
    none = DistillationHead(8, 10, distillation_type="none")
    assert float(none.loss(logits(ref), soft)) == float(none.loss(logits(ref), target(ref)))
    with pytest.raises(ConfigError, match="DistillationHook"):
        DistillationHead(8, 10, distillation_type="hard").loss(logits(ref), soft)
    with pytest.raises(ConfigError, match="TokenLabelHead"):
        none.loss(logits(ref), soft, (0, 0, 2, 2))
    with pytest.raises(ValueError, match="teacher logits"):
        DistillationHead(8, 10).loss(logits(ref), {"soft": soft, "teacher": paddle.zeros([2, 7])})
    with pytest.raises(ValueError, match="soft targets"):
        none.loss(logits(ref), paddle.zeros([2]))
    with pytest.raises(ConfigError, match="distillation_type"):
        DistillationHead(8, 10, distillation_type="kl")
    with pytest.raises(ConfigError, match="alpha"):
        DistillationHead(8, 10, alpha=1.5)


def test_head_outputs_train_and_eval():
    paddle.seed(0)
    head = DistillationHead(8, 4)
    tokens = paddle.randn([3, 2 + 4, 8])
    train = head(tokens, (2, 2))
    np.testing.assert_array_equal(train["cls"].numpy(), head.cls_head(tokens[:, 0]).numpy())
    np.testing.assert_array_equal(train["dist"].numpy(), head.dist_head(tokens[:, 1]).numpy())
    head.eval()
    np.testing.assert_allclose(head(tokens, (2, 2)).numpy(), (train["cls"] + train["dist"]).numpy() / 2, atol=1e-7)


# ----------------------------------------------------------------------------- DistillationHook

def fake_trainer(student, images, targets, step=0):
    """The trainer state the hooks read and write."""
    return SimpleNamespace(model_without_ddp=student, images=images, targets=targets, amp_context=None,
                           seed=0, rank=0, global_step=step, iter=step)


@pytest.mark.parametrize("case, teacher_cfg", [
    ("deit_tiny_d2", {"name": "deit_tiny_patch16_224", "depth": 2, "num_classes": 10}),
    ("regnety_002_c10", {"name": "regnety_002", "num_classes": 10}),  # DeiT's teacher family
])
def test_hook_with_an_official_checkpoint_as_teacher(case, teacher_cfg):
    """Teacher = a fixture model loaded from its official .pth: the logits put in the target are
    that model's recorded eval output."""
    ref = load_npz(f"{case}.npz")
    student = create_model("deit_tiny_distilled_patch16_224", depth=1, num_classes=10)
    hook = HOOKS.build({"name": "DistillationHook", "teacher": teacher_cfg, "weights": fixture_path(f"{case}.pth")})
    soft = paddle.full([2, 10], 0.1)
    trainer = fake_trainer(student, paddle.to_tensor(ref["x"]), soft)
    hook.before_run(trainer)
    hook.before_train_iter(trainer)
    assert set(trainer.targets) == {"soft", "teacher"} and trainer.targets["soft"] is soft
    np.testing.assert_allclose(trainer.targets["teacher"].numpy(), ref["eval/out"], rtol=0, atol=1e-5)


def saved_lvvit_teacher(path, num_classes):
    """A small LV-ViT teacher written to ``path``: (model in eval mode, its model config)."""
    cfg = {"name": "lvvit_tiny", "embed_dim": 48, "depth": 1, "num_heads": 2, "stem_channels": 8, "img_size": 32,
           "patch_size": 8, "num_classes": num_classes}
    paddle.seed(1)
    teacher = create_model(**cfg)
    paddle.save(teacher.state_dict(), path)
    teacher.eval()
    return teacher, cfg


@pytest.fixture
def lvvit_teacher(tmp_path):
    path = str(tmp_path / "teacher.pdparams")
    teacher, cfg = saved_lvvit_teacher(path, num_classes=5)
    return teacher, path, cfg


def small_student(num_classes=5):
    paddle.seed(2)
    return create_model("deit_tiny_distilled_patch16_224", embed_dim=48, depth=1, img_size=32, patch_size=8,
                        num_classes=num_classes)


def test_hook_training_step_keeps_the_teacher_frozen(lvvit_teacher):
    """Mixup (8) then distillation (9), a student step: the teacher saw the mixed images, its
    weights got no gradient and did not move; the student learned from its logits."""
    teacher, path, teacher_cfg = lvvit_teacher
    student = small_student()
    hooks = sorted([DistillationHook(teacher_cfg, path), MixupHook(mixup_alpha=0.8, cutmix_alpha=0.0)],
                   key=lambda h: h.priority)
    assert [type(h) for h in hooks] == [MixupHook, DistillationHook]
    images = paddle.randn([4, 3, 32, 32])
    soft = paddle.nn.functional.one_hot(paddle.to_tensor([0, 1, 2, 3]), 5) * 0.9 + 0.02
    trainer = fake_trainer(student, images, soft, step=3)
    for hook in hooks:
        hook.before_run(trainer)
    for hook in hooks:
        hook.before_train_iter(trainer)
    frozen = hooks[1].teacher
    assert not frozen.training and all(p.stop_gradient for p in frozen.parameters())
    assert not np.allclose(trainer.images.numpy(), images.numpy())  # Mixup did mix
    with paddle.no_grad():
        expected = teacher(trainer.images).numpy()
    np.testing.assert_allclose(trainer.targets["teacher"].numpy(), expected, rtol=0, atol=1e-6)
    assert not np.allclose(trainer.targets["soft"].numpy(), soft.numpy())  # mixed before being wrapped

    optimizer = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=student.parameters())
    before = {k: v.numpy().copy() for k, v in student.state_dict().items()}
    student.train()
    loss = student.loss(student(trainer.images), trainer.targets)
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in frozen.parameters())
    saved = paddle.load(path)
    for key, value in frozen.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), saved[key].numpy(), err_msg=key)
    assert not np.allclose(student.state_dict()["head.dist_head.weight"].numpy(), before["head.dist_head.weight"])


def test_hook_errors(lvvit_teacher, tmp_path):
    _, path, teacher_cfg = lvvit_teacher
    trainer = fake_trainer(small_student(), None, None)
    missing = str(tmp_path / "nowhere.pdparams")
    with pytest.raises(ConfigError, match="nowhere.pdparams"):
        DistillationHook(teacher_cfg, missing).before_run(trainer)
    with pytest.raises(ConfigError, match="num_classes=5, the student 7"):
        DistillationHook(teacher_cfg, path).before_run(fake_trainer(small_student(num_classes=7), None, None))
    plain = create_model("deit_tiny_patch16_224", embed_dim=48, depth=1, img_size=32, patch_size=8, num_classes=5)
    with pytest.raises(ConfigError, match="DistillationHead"):
        DistillationHook(teacher_cfg, path).before_run(fake_trainer(plain, None, None))
    unused = small_student()
    unused.head.distillation_type = "none"
    with pytest.raises(ConfigError, match="teacher would be unused"):
        DistillationHook(teacher_cfg, path).before_run(fake_trainer(unused, None, None))


def test_training_run_with_a_teacher(tmp_path):
    """tools/train.py: a distilled DeiT (soft, tau 3) with Mixup, EMA and checkpoints on demo images."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
    import train  # tools/train.py

    root = make_demo_dataset(str(tmp_path / "demo"), train_per_class=4, val_per_class=2, image_size=32)
    teacher_path = str(tmp_path / "teacher.pdparams")
    _, teacher_cfg = saved_lvvit_teacher(teacher_path, num_classes=10)
    transforms = [{"name": "ResizeCropPct", "size": 32, "crop_pct": 1.0}, {"name": "Normalize"}]
    cfg = {
        "device": "cpu", "epochs": 1, "amp": {"enable": False}, "output_dir": str(tmp_path / "out"),
        "model": {"name": "deit_tiny_distilled_patch16_224", "num_classes": 10, "img_size": 32, "patch_size": 8,
                  "embed_dim": 48, "depth": 1, "num_heads": 3, "distillation_type": "soft", "tau": 3.0},
        "data": {"batch_size": 8, "val_batch_size": 8, "num_workers": 0,
                 "train": {"name": "ImageNetTokenLabel", "root": f"{root}/train", "transforms": transforms},
                 "val": {"name": "ImageNetTokenLabel", "root": f"{root}/val", "transforms": transforms},
                 "target": {"name": "SoftTargets", "num_classes": 10}},
        "lr_scheduler": {"name": "CosineWarmup", "warmup_epochs": 0, "cooldown_epochs": 0},
        "hooks": {"mixup": {"name": "MixupHook"}, "ema": {"name": "EMAHook", "decay": 0.9},
                  "distillation": {"name": "DistillationHook", "teacher": teacher_cfg, "weights": teacher_path}},
    }
    config = str(tmp_path / "deit_distilled.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(cfg, f)
    metrics = train.main(["-c", config])
    assert metrics["model/count"] == 20 and metrics["tracked"] == "ema"
    with open(os.path.join(cfg["output_dir"], "log.txt")) as f:
        log = f.read()
    assert "distillation teacher lvvit_tiny: loaded 36 tensors from teacher.pdparams" in log
    assert "ckpt_e0000_i000005.pdckpt" in os.listdir(cfg["output_dir"])
