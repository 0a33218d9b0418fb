"""DeiT's distillation loss (DistillationHead) against the official values and gradients, and the
Teacher batch stage with real teachers (official DeiT and RegNetY checkpoints, an LV-ViT saved as
.pdparams).

Tolerances from the fixture README: losses atol 1e-5, logits atol 1e-5, gradients rtol 1e-4
relative to each gradient's scale.
"""
import os
import numpy as np
import paddle
import pytest
import yaml

from passl_tl.datasets.demo import make_demo_dataset
from passl_tl.batch.mixup import Mixup
from passl_tl.batch.pipeline import Batch, BatchPipeline, Step
from passl_tl.batch.teacher import Teacher
from passl_tl.models import create_model
from passl_tl.models.heads import DistillationHead
from passl_tl.utils.registry import BATCH_TRANSFORMS, ConfigError

from tests.conftest import fixture_path, load_npz, train

LOSSES = {"none": dict(distillation_type="none"), "hard": dict(distillation_type="hard"),
          "soft_tau1": dict(distillation_type="soft", tau=1.0), "soft_tau3": dict(distillation_type="soft", tau=3.0)}


@pytest.fixture(scope="module")
def ref():
    return load_npz("deit_tiny_distilled_d2.npz")


def logits(ref):
    x_cls, x_dist = (paddle.to_tensor(ref[k], stop_gradient=False) for k in ("train/x_cls", "train/x_dist"))
    return {"cls": x_cls, "dist": x_dist}


def target(ref):
    return paddle.to_tensor(ref["loss/soft_target"])


def teacher_logits(ref):
    return paddle.to_tensor(ref["loss/teacher_logits"])


def scaled_close(actual, expected, rtol=1e-4):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("variant", list(LOSSES))
def test_loss_value_and_logit_gradients(ref, variant):
    head = DistillationHead(8, 10, alpha=0.5, **LOSSES[variant])
    outputs = logits(ref)
    loss = head.loss(outputs, target(ref), teacher_logits(ref))
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
    loss = head.loss(logits(ref), target(ref), teacher_logits(ref))
    np.testing.assert_allclose((float(loss) - 0.5 * float(base)) / 0.5, term,
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
    assert float(none.loss(logits(ref), soft)) == float(none.loss(logits(ref), soft, teacher_logits(ref)))
    with pytest.raises(ConfigError, match="batch.teacher"):
        DistillationHead(8, 10, distillation_type="hard").loss(logits(ref), soft)
    with pytest.raises(ConfigError, match="TokenLabelHead"):
        none(paddle.zeros([2, 6, 8]), (2, 2), (0, 0, 2, 2))
    with pytest.raises(ValueError, match="teacher logits"):
        DistillationHead(8, 10).loss(logits(ref), soft, paddle.zeros([2, 7]))
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


# ----------------------------------------------------------------------------- Teacher stage

@pytest.mark.parametrize("case, teacher_cfg", [
    ("deit_tiny_d2", {"name": "deit_tiny_patch16_224", "depth": 2, "num_classes": 10}),
    ("regnety_002_c10", {"name": "regnety_002", "num_classes": 10}),  # DeiT's teacher family
])
def test_teacher_stage_with_an_official_checkpoint(case, teacher_cfg):
    """Teacher = a fixture model loaded from its official .pth: the logits put in the batch are that
    model's recorded eval output; images and targets pass through."""
    ref = load_npz(f"{case}.npz")
    student = create_model("deit_tiny_distilled_patch16_224", depth=1, num_classes=10)
    stage = BATCH_TRANSFORMS.build({"name": "Teacher", "teacher": teacher_cfg, "weights": fixture_path(f"{case}.pth")})
    stage.bind(student, None)
    batch = Batch(paddle.to_tensor(ref["x"]), paddle.full([2, 10], 0.1))
    out = stage(batch, Step(0, 0, 0))
    assert out.images is batch.images and out.targets is batch.targets
    np.testing.assert_allclose(out.teacher_logits.numpy(), ref["eval/out"], rtol=0, atol=1e-5)


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


def test_training_step_keeps_the_teacher_frozen(lvvit_teacher):
    """Mixup, then the teacher (the pipeline's order, whatever the config's), a student step: the teacher
    saw the mixed images, its weights got no gradient and did not move; the student learned from its logits."""
    teacher, path, teacher_cfg = lvvit_teacher
    student = small_student()
    pipeline = BatchPipeline({"teacher": Teacher(teacher_cfg, path), "mixup": Mixup(mixup_alpha=0.8, cutmix_alpha=0.0),
                              "target": BATCH_TRANSFORMS.build({"name": "SoftTargets", "smoothing": 0.1})})
    assert list(pipeline.stages) == ["target", "mixup", "teacher"]
    pipeline.bind(student)
    images = paddle.randn([4, 3, 32, 32])
    batch = pipeline(images, paddle.to_tensor([0, 1, 2, 3]), Step(0, 0, 3))
    frozen = pipeline.get("teacher").teacher
    assert not frozen.training and all(p.stop_gradient for p in frozen.parameters())
    assert not np.allclose(batch.images.numpy(), images.numpy())  # Mixup did mix
    with paddle.no_grad():
        expected = teacher(batch.images).numpy()
    np.testing.assert_allclose(batch.teacher_logits.numpy(), expected, rtol=0, atol=1e-6)
    assert batch.targets.shape == [4, 5] and float(batch.targets.max()) < 0.91  # smoothed, then mixed

    optimizer = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=student.parameters())
    before = {k: v.numpy().copy() for k, v in student.state_dict().items()}
    student.train()
    loss = student.loss(student(batch.images), batch)
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in frozen.parameters())
    saved = paddle.load(path)
    for key, value in frozen.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), saved[key].numpy(), err_msg=key)
    assert not np.allclose(student.state_dict()["head.dist_head.weight"].numpy(), before["head.dist_head.weight"])


def test_teacher_errors_when_bound(lvvit_teacher, tmp_path):
    _, path, teacher_cfg = lvvit_teacher
    missing = str(tmp_path / "nowhere.pdparams")
    with pytest.raises(ConfigError, match="nowhere.pdparams"):
        Teacher(teacher_cfg, missing).bind(small_student(), None)
    with pytest.raises(ConfigError, match="num_classes=5, the student 7"):
        Teacher(teacher_cfg, path).bind(small_student(num_classes=7), None)
    plain = create_model("deit_tiny_patch16_224", embed_dim=48, depth=1, img_size=32, patch_size=8, num_classes=5)
    with pytest.raises(ConfigError, match="DistillationHead"):
        Teacher(teacher_cfg, path).bind(plain, None)
    unused = small_student()
    unused.head.distillation_type = "none"
    with pytest.raises(ConfigError, match="teacher would be unused"):
        Teacher(teacher_cfg, path).bind(unused, None)


def test_training_run_with_a_teacher(tmp_path):
    """tools/train.py: a distilled DeiT (soft, tau 3) with Mixup, EMA and checkpoints on demo images."""
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
                 "val": {"name": "ImageNetTokenLabel", "root": f"{root}/val", "transforms": transforms}},
        "batch": {"target": {"name": "SoftTargets"}, "mixup": {"name": "Mixup"},
                  "teacher": {"name": "Teacher", "teacher": teacher_cfg, "weights": teacher_path}},
        "lr_scheduler": {"name": "CosineWarmup", "warmup_epochs": 0, "cooldown_epochs": 0},
        "hooks": {"ema": {"name": "EMAHook", "decay": 0.9}},
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
