"""Token-label generation: dense logits of every model family, the tool on real demo files
(layout, top-k, resume, 2-process launch) and training on the generated labels."""
import os

import numpy as np
import paddle
import pytest

from passl_tl import build_model
from passl_tl.datasets.demo import make_demo_dataset
from passl_tl.datasets.imagenet_token_label import ImageNetTokenLabel
from passl_tl.engine.run_config import load_run_config
from passl_tl.token_labels.generation import eval_transform_specs
from passl_tl.utils.registry import ConfigError

from tests.conftest import DEMO_CONFIG, import_tool, launch_two, train

generate_token_labels = import_tool("generate_token_labels")  # tools/generate_token_labels.py

TEACHER = ["model.num_classes=5", "model.embed_dim=48", "model.depth=2", "model.num_heads=2"]
NUM_IMAGES = 15  # 5 classes x 3 training images


# ----------------------------------------------------------------------------- dense logits

def by_hand(linear, features):
    """``linear`` applied to each row of ``[..., D]`` features in NumPy (Paddle weights are [in, out])."""
    return features @ linear.weight.numpy() + linear.bias.numpy()


VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": [32, 48]}


@pytest.mark.parametrize("backbone, head, prefix", [
    ({"name": "LVViT", "patch_size": 8, **VIT}, {"name": "TokenLabelHead"}, 1),
    ({"name": "LVViT", "patch_size": 8, **VIT}, {"name": "LinearHead"}, 1),
    ({"name": "DeiT", "patch_size": 8, "distilled": True, **VIT}, {"name": "DistillationHead"}, 2),
    ({"name": "T2TViT", "tokens_type": "transformer", **VIT}, {"name": "LinearHead"}, 1),
])
def test_dense_logits_apply_the_token_classifier_to_each_patch_token(backbone, head, prefix):
    paddle.seed(1)
    model = build_model({"name": "Classifier", "backbone": backbone, "head": {**head, "num_classes": 7}})
    model.eval()
    x = paddle.randn([2, 3, 32, 48])
    rows, cols = model.grid_size
    tokens = model.backbone(x).numpy()
    assert tokens.shape[1] == prefix + rows * cols
    patches = tokens[:, prefix:]  # row-major over the grid
    if head["name"] == "TokenLabelHead":
        expected = by_hand(model.head.aux_head, patches)
    elif head["name"] == "LinearHead":
        expected = by_hand(model.head.fc, patches)
    else:
        expected = (by_hand(model.head.cls_head, patches) + by_hand(model.head.dist_head, patches)) / 2
    dense = model.dense_logits(x).numpy()
    assert dense.shape == (2, 7, rows, cols) and (rows, cols) != (cols, rows)
    np.testing.assert_allclose(dense, expected.reshape(2, rows, cols, 7).transpose(0, 3, 1, 2), atol=1e-5)
    if head["name"] == "TokenLabelHead":  # its eval output reads the same per-token logits
        cls = by_hand(model.head.cls_head, tokens[:, 0])
        np.testing.assert_allclose(model(x).numpy(), cls + 0.5 * dense.max(axis=(2, 3)), atol=1e-5)


def test_dense_logits_of_a_cnn_apply_fc_at_each_position_of_its_last_map():
    paddle.seed(2)
    model = build_model({"name": "regnety_002", "num_classes": 6})
    model.eval()
    x = paddle.randn([2, 3, 96, 64])
    feature_map = model.backbone.forward_features(x).numpy()  # [B, C, 3, 2]
    dense = model.dense_logits(x).numpy()
    expected = by_hand(model.head.fc, feature_map.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert dense.shape == (2, 6, 3, 2)
    # float32 RegNet features of magnitude ~10 through a 1x1 classifier in another summation order
    np.testing.assert_allclose(dense, expected, atol=1e-4)
    # fc is linear: the mean over positions is the pooled model's output
    np.testing.assert_allclose(dense.mean(axis=(2, 3)), model(x).numpy(), atol=1e-4)


def test_dense_logits_refuse_train_mode():
    model = build_model({"name": "regnety_002", "num_classes": 6})
    with pytest.raises(RuntimeError, match="eval"):
        model.dense_logits(paddle.randn([1, 3, 64, 64]))


def test_eval_transforms_take_the_size_and_crop_pct():
    cfg = load_run_config(DEMO_CONFIG)
    assert eval_transform_specs(cfg, None, 1.0) == [
        {"name": "ResizeCropPct", "size": 64, "crop_pct": 1.0}, {"name": "Normalize"}]
    assert eval_transform_specs(cfg, 96, 0.875)[0] == {"name": "ResizeCropPct", "size": 96, "crop_pct": 0.875}


# ----------------------------------------------------------------------------- the tool on demo files

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("labels")
    data = make_demo_dataset(str(base / "demo"), num_classes=5, train_per_class=3, val_per_class=1)
    paddle.seed(3)
    teacher = build_model(load_run_config(DEMO_CONFIG, TEACHER))
    weights = str(base / "teacher.pdparams")
    paddle.save(teacher.state_dict(), weights)
    return base, data, teacher, weights


def tool_args(setup, out, *extra):
    _, data, _, weights = setup
    return ["-c", DEMO_CONFIG, "-o", *TEACHER, "--teacher-weights", weights, "--data", os.path.join(data, "train"),
            "--out", out, "--batch-size", "4", "--num-workers", "0", *extra]


def read_labels(out):
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(out) for f in names)
    return {os.path.relpath(f, out): np.load(f) for f in files}


@pytest.fixture(scope="module")
def generated(setup):
    base = setup[0]
    out = str(base / "single")
    result = generate_token_labels.main(tool_args(setup, out))
    return out, result, read_labels(out)


def test_tool_writes_top_k_of_the_dense_logits_per_image(setup, generated):
    _, data, teacher, _ = setup
    out, result, labels = generated
    assert result == {"total": NUM_IMAGES, "written": NUM_IMAGES, "skipped": 0, "correct": result["correct"]}
    images = ImageNetTokenLabel(os.path.join(data, "train"), transforms=[
        {"name": "ResizeCropPct", "size": 64, "crop_pct": 1.0}, {"name": "Normalize"}])
    assert sorted(labels) == sorted(os.path.join(os.path.basename(os.path.dirname(p)),
                                                 os.path.basename(p).replace(".JPEG", ".npy"))
                                    for p, _ in images.samples)
    teacher.eval()
    batch = np.stack([images[i][0] for i in range(len(images))])
    dense = teacher.dense_logits(paddle.to_tensor(batch)).numpy()  # [15, 5, 8, 8]
    ids = np.argsort(-dense, axis=1, kind="stable")
    correct = 0
    for i, (path, target) in enumerate(images.samples):
        label = labels[os.path.relpath(path, os.path.join(data, "train")).replace(".JPEG", ".npy")]
        assert label.dtype == np.float16 and label.shape == (2, 5, 8, 8)
        np.testing.assert_array_equal(label[1], ids[i])  # all 5 classes: distinct ids, by logit
        values = np.take_along_axis(dense[i], ids[i], axis=0)  # the float16 rounding of these
        np.testing.assert_allclose(label[0].astype(np.float32), values, rtol=2 ** -11, atol=1e-6)
        assert (np.diff(label[0].astype(np.float32), axis=0) <= 0).all()
        correct += int(dense[i].mean(axis=(1, 2)).argmax() == target)
    assert result["correct"] == correct


def test_tool_keeps_fewer_classes_and_reports_counts(setup, tmp_path, capsys):
    out = str(tmp_path / "top3")
    generate_token_labels.main(tool_args(setup, out, "--topk", "3"))
    printed = capsys.readouterr().out
    assert f"{NUM_IMAGES} images: {NUM_IMAGES} labelled, 0 already labelled" in printed
    assert f"on the {NUM_IMAGES} images labelled" in printed
    labels = read_labels(out)
    assert len(labels) == NUM_IMAGES and all(label.shape == (2, 3, 8, 8) for label in labels.values())
    for label in labels.values():
        ids = label[1].reshape(3, -1).T
        assert all(len(set(row)) == 3 for row in ids.tolist())


def test_tool_resumes(setup, generated, tmp_path, capsys):
    source, _, expected = generated
    out = str(tmp_path / "resumed")
    generate_token_labels.main(tool_args(setup, out))
    mtimes = {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in expected}
    result = generate_token_labels.main(tool_args(setup, out))
    assert (result["written"], result["skipped"]) == (0, NUM_IMAGES)
    assert {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in expected} == mtimes
    assert "no image labelled in this run" in capsys.readouterr().out
    deleted, truncated, wrong_shape = sorted(expected)[:3]
    os.remove(os.path.join(out, deleted))
    with open(os.path.join(out, truncated), "r+b") as f:
        f.truncate(100)
    np.save(os.path.join(out, wrong_shape), expected[wrong_shape][:, :3])
    result = generate_token_labels.main(tool_args(setup, out))
    assert (result["written"], result["skipped"]) == (3, NUM_IMAGES - 3)
    labels = read_labels(out)
    assert labels.keys() == expected.keys()  # no temporary files left behind
    for name in expected:
        # The 3 regenerated images run in a smaller batch than at first: float32 matmuls then
        # round differently, which can move a logit by one float16 step (ids stay the same).
        np.testing.assert_array_equal(labels[name][1], expected[name][1])
        np.testing.assert_allclose(labels[name][0].astype(np.float32), expected[name][0].astype(np.float32),
                                   rtol=2e-3, atol=1e-4)


def test_tool_labels_with_a_cnn_teacher_at_another_size(setup, tmp_path, capsys):
    """A RegNet replaces the config's model; its last map has stride 32: 6 x 6 at 192 px, 2 x 2 at 64."""
    base = setup[0]
    paddle.seed(4)
    weights = str(base / "regnet.pdparams")
    paddle.save(build_model({"name": "regnety_002", "num_classes": 5}).state_dict(), weights)

    def run(size):
        out = str(tmp_path / f"cnn{size}")
        args = tool_args(setup, out, "--img-size", str(size), "--topk", "2", "--transfer")
        args[args.index("--teacher-weights") + 1] = weights
        generate_token_labels.main([*args, "-o", "model={name: regnety_002, num_classes: 5}"])
        return read_labels(out), capsys.readouterr().out

    labels, printed = run(192)
    assert len(labels) == NUM_IMAGES and all(label.shape == (2, 2, 6, 6) for label in labels.values())
    assert "teacher top-1 not reported (--transfer)" in printed and "too narrow" not in printed
    labels, printed = run(64)
    assert all(label.shape == (2, 2, 2, 2) for label in labels.values())
    assert "label maps 2x2 are too narrow for training" in printed


def test_tool_refuses_an_image_size_the_teacher_was_not_built_for(setup, tmp_path):
    with pytest.raises(ConfigError, match="model.img_size=96"):
        generate_token_labels.main(tool_args(setup, str(tmp_path / "x"), "--img-size", "96"))


@pytest.mark.slow
def test_two_process_launch_writes_the_same_files(setup, tmp_path):
    """Each image once, bit-identical to one process; batches of 1 make the arithmetic identical too
    (a batch of other images may change a float16 value by one unit in the last place)."""
    single, launched = str(tmp_path / "single"), str(tmp_path / "launched")
    generate_token_labels.main(tool_args(setup, single, "--batch-size", "1"))
    _, logs = launch_two([generate_token_labels.__file__, *tool_args(setup, launched, "--batch-size", "1")],
                         tmp_path / "log")
    assert "8 of this process's 8 images" in logs[0] and "7 of this process's 7 images" in logs[1]
    assert f"{NUM_IMAGES} images: {NUM_IMAGES} labelled, 0 already labelled" in logs[0]
    expected, labels = read_labels(single), read_labels(launched)
    assert len(expected) == NUM_IMAGES and labels.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(labels[name], expected[name])


def test_generated_labels_train_lvvit(setup, generated, tmp_path):
    _, data, _, _ = setup
    labels, _, _ = generated
    config = tmp_path / "student.yaml"
    config.write_text(f"""_base_: {DEMO_CONFIG}
data:
  train:
    name: ImageNetTokenLabel
    root: {os.path.join(data, 'train')}
    label_root: {labels}
    class_list: {os.path.join(data, 'classes.txt')}
    transforms:
      - {{name: RandomHorizontalFlipWithLabel, prob: 0.5}}
      - {{name: RandomResizedCropWithCoords, size: 64, scale: [0.35, 1.0]}}
      - {{name: Normalize}}
""")
    out = str(tmp_path / "student")
    demo = [f"data.val.{k}={v}" for k, v in (("root", data), ("num_classes", 5), ("train_per_class", 3),
                                              ("val_per_class", 1))]
    metrics = train.main(["-c", str(config), "-o", *demo, "model.num_classes=5",
                          "epochs=1", "data.batch_size=5", "data.val_batch_size=5", "data.num_workers=0",
                          f"output_dir={out}", "hooks.logger.interval=1"])
    log = open(os.path.join(out, "log.txt")).read()
    assert "epoch 0 [3/3]" in log and metrics["model/count"] == 5
