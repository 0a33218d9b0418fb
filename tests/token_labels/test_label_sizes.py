"""Token labels for students other than plain ViTs: one pooled label per image (ReLabel mode, label size 1) for any
classifier, and a CNN whose stride-32 last map is its token grid, with MixToken drawn on that coarse grid and
applied, scaled, to its stem map.

The 1 x 1 targets are checked against the official ``mixup_target(label_size=14)``'s cls column (the same
RoIAlign to 1 x 1 its ``label_size=1`` path computes) within the dense-target tolerance 1e-4; losses against
their definition (``TokenLabelSoftTargetCrossEntropy``: cross entropy with column 1) computed in float64 here.
"""
import os
import re

import numpy as np
import paddle
import pytest

from passl_tl.batch.mixup import mix_targets
from passl_tl.batch.pipeline import Batch
from passl_tl.engine.run_config import load_run_config
from passl_tl.models import build_model, create_model
from passl_tl.token_labels.mixtoken import mix_lam
from passl_tl.token_labels.targets import TokenLabelTargets, make_token_targets
from passl_tl.utils.registry import ConfigError

from tests.conftest import REPO_ROOT, capture, load_npz, small_run_overrides, train

RELABEL = os.path.join(REPO_ROOT, "configs", "regnet", "regnety_002_relabel_demo.yaml")
COARSE = os.path.join(REPO_ROOT, "configs", "regnet", "regnety_002_token_label_demo.yaml")


def cnn_run_overrides(data_root: str, out: str) -> list[str]:
    """``small_run_overrides`` for a CNN (no drop path argument), one epoch."""
    return [o for o in small_run_overrides(data_root, out, epochs=1) if not o.startswith("model.drop_path_rate")]


def log_softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_one_label_per_image_is_the_official_pooled_target():
    ref = load_npz("labels_dense_target.npz")
    # box_order "official": the fixture pools the official (transposed) crop box; see pool_crop
    targets = make_token_targets(ref["input"], 1000, label_size=1, smoothing=0.1, box_order="official").numpy()
    assert targets.shape == (3, 1000, 2)
    np.testing.assert_allclose(targets, ref["target_lam1"][:, :, :2], rtol=0, atol=1e-4)
    mixed = mix_targets(paddle.to_tensor(targets), 0.7).numpy()  # Mixup/CutMix mix both columns by λ
    np.testing.assert_allclose(mixed, ref["target_mix"][:, :, :2], rtol=0, atol=1e-4)


def test_relabel_loss_of_both_heads_is_the_cross_entropy_with_the_pooled_label():
    rng = np.random.RandomState(0)
    B, K, N = 4, 7, 9
    target = rng.dirichlet(np.ones(K), size=(B, 2)).transpose(0, 2, 1).astype(np.float32)  # [B, K, 2]
    logits = rng.standard_normal((B, K)).astype(np.float32)
    expected = -(target[:, :, 1] * log_softmax64(logits)).sum(-1).mean()

    linear = create_model("regnety_002", num_classes=K).head
    np.testing.assert_allclose(float(linear.loss(paddle.to_tensor(logits), paddle.to_tensor(target))), expected,
                               rtol=1e-6)

    token_head = create_model("regnety_002", head={"name": "TokenLabelHead"}, num_classes=K, img_size=96).head
    outputs = {"cls": paddle.to_tensor(logits), "aux": paddle.randn([B, N, K]), "mix_box": None}
    np.testing.assert_allclose(float(token_head.loss(outputs, paddle.to_tensor(target))), expected, rtol=1e-6)
    box = (0, 0, 2, 1)  # λ = 1 - 2/9 on the 3 x 3 grid: the class target mixed with the flipped batch
    lam = mix_lam(box, N)
    mixed = lam * target[:, :, 1] + (1 - lam) * target[::-1, :, 1]
    np.testing.assert_allclose(float(token_head.loss({**outputs, "mix_box": box}, paddle.to_tensor(target))),
                               -(mixed * log_softmax64(logits)).sum(-1).mean(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"one-per-image token labels \[4, 7, 2\]"):
        linear.loss(paddle.to_tensor(logits), paddle.to_tensor(target[:, :, :1]))


def test_relabel_mode_trains_a_cnn_end_to_end(tmp_path):
    data_root, out = str(tmp_path / "demo"), str(tmp_path / "out")
    metrics = train.main(["-c", RELABEL, "-o", *cnn_run_overrides(data_root, out)])
    assert 0.0 <= metrics["model/top1"] <= 100.0 and metrics["model/count"] == 30
    log = open(os.path.join(out, "log.txt"), encoding="utf-8").read()
    losses = [float(v) for v in re.findall(r"\] loss (\S+)", log)]
    assert losses and np.isfinite(losses).all()
    cfg = load_run_config(RELABEL)
    assert cfg["batch"]["target"]["label_size"] == 1 and cfg["batch"]["mixtoken"] is None


def test_stride_32_cnn_has_a_7x7_token_grid_and_mixes_its_stem_map():
    """RegNetY at 224: tokens = pooled features + 49 positions; a box on the 7 x 7 grid covers 16 x 16 stem cells
    each; the aux logits come back un-mixed on the 7 x 7 grid."""
    paddle.seed(0)
    model = build_model(load_run_config(COARSE))
    backbone = model.backbone
    assert (model.grid_size, backbone.stem_size, backbone.mix_scale) == ((7, 7), (112, 112), 16)
    images = paddle.randn([2, 3, 224, 224])
    model.eval()
    with paddle.no_grad():
        assert model(images).shape == [2, 10]
    model.train()
    box = (1, 2, 4, 6)
    seen, handle = capture(backbone.s1, pre=True)
    outputs = model(images, box)
    handle.remove()
    with paddle.no_grad():  # train-mode BatchNorm: the same batch gives the same stem output
        stem = backbone.stem(images).numpy()
    expected = stem.copy()
    expected[:, :, 16:64, 32:96] = stem[::-1, :, 16:64, 32:96]
    np.testing.assert_allclose(seen["value"], expected, rtol=0, atol=1e-6)
    assert outputs["aux"].shape == [2, 49, 10] and outputs["mix_box"] == box
    labels = np.zeros([2, 3, 5, 18, 18], np.float32)
    labels[:, 1] = np.arange(5)[:, None, None]  # class ids 0..4 at every cell, logits 0
    labels[:, 2, 0, 0, :4] = (0.0, 0.0, 1.0, 1.0)  # the crop: the whole image
    targets = make_token_targets(labels, 10, label_size=7)
    loss = model.loss(outputs, Batch(images, targets))
    loss.backward()
    assert np.isfinite(float(loss)) and model.head.aux_head.weight.grad is not None


def test_coarse_grid_cnn_trains_with_token_labels_and_mixtoken(tmp_path):
    data_root, out = str(tmp_path / "demo"), str(tmp_path / "out")
    metrics = train.main(["-c", COARSE, "-o", "model.img_size=96", *cnn_run_overrides(data_root, out)])
    assert metrics["model/count"] == 30 and 0.0 <= metrics["model/top1"] <= 100.0


@pytest.mark.parametrize("overrides, message", [
    (["batch.target.label_size=5"],
     r"batch.target.label_size 5 cannot be served by RegNet: its head has one output per cell of its 7x7 token grid "
     r"\(model.img_size \(224, 224\)\); use label_size 7"),
    (["model.img_size=200"],
     r"MixToken: RegNet's 7x7 token grid does not divide its 100x100 stem map at model.img_size \(200, 200\)"),
])
def test_sizes_a_student_cannot_serve_fail_before_training(tmp_path, overrides, message):
    cfg = load_run_config(COARSE, overrides)
    with pytest.raises(ConfigError, match=message):
        train.main(["-c", COARSE, "-o", *overrides, *cnn_run_overrides(str(tmp_path / "demo"), str(tmp_path / "out"))])
    assert not os.path.exists(tmp_path / "out" / "final.pdparams")
    assert cfg["model"]["name"] == "regnety_002"


def test_per_token_targets_need_a_grid_or_label_size_1():
    stage = TokenLabelTargets()
    with pytest.raises(ConfigError, match=r"RegNet has none \(a CNN: set model.img_size\), or set "
                                          r"batch.target.label_size: 1"):
        stage.bind(create_model("regnety_002", num_classes=10), None)
    stage = TokenLabelTargets(label_size=1)
    stage.bind(create_model("regnety_002", num_classes=10), None)
    assert stage.label_size == 1
