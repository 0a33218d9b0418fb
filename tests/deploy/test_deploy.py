"""Deployment: export to a Paddle inference model, predict from it and from the dygraph model."""
import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
import yaml

from passl_tl import build_model
from passl_tl.datasets.demo import make_demo_dataset
from passl_tl.datasets.image_folder import read_rgb
from passl_tl.datasets.transforms import Normalize, ResizeCropPct
from passl_tl.deploy import (DygraphPredictor, InferencePredictor, imagenet_class_names, read_class_names,
                             read_metadata, resolve_class_names)
from passl_tl.utils.config import ConfigError

from tests.conftest import REPO_ROOT, fixture_path, import_tool, load_npz

export_model = import_tool("export_model")  # tools/export_model.py
predict = import_tool("predict")  # tools/predict.py

NUM_CLASSES = 5
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
MODEL = {"name": "lvvit_tiny", "num_classes": NUM_CLASSES, "img_size": 64, "patch_size": 8, "embed_dim": 48,
         "depth": 1, "num_heads": 2}
VAL_TRANSFORMS = [{"name": "ResizeCropPct", "size": 64, "crop_pct": 0.875, "interpolation": "bilinear"},
                  {"name": "Normalize", "mean": MEAN, "std": STD}]


def write_config(path, model=MODEL, transforms=VAL_TRANSFORMS):
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump({"device": "cpu", "model": model, "data": {"val": {"transforms": transforms}}}, f)
    return str(path)


def reference_logits(model, path):
    """Dygraph logits ``[1, K]`` of one image file, preprocessed by the transforms built by hand."""
    sample = {"img": read_rgb(path)}
    for t in (ResizeCropPct(64, crop_pct=0.875, interpolation="bilinear"), Normalize(MEAN, STD)):
        sample = t(sample, None)
    with paddle.no_grad():
        return model(paddle.to_tensor(sample["img"][None]))


def reference_probs(model, path):
    return F.softmax(reference_logits(model, path), axis=-1).numpy()[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny LV-ViT with spread-out head weights, its config, weights, export and a folder of images."""
    base = tmp_path_factory.mktemp("deploy")
    config = write_config(base / "model.yaml")
    paddle.seed(3)
    model = build_model(MODEL)
    for param in model.head.parameters():
        param.set_value(0.2 * paddle.randn(param.shape))  # logits spread about 1: a stable top-5 order
    weights = str(base / "w.pdparams")
    paddle.save(model.state_dict(), weights)

    demo = make_demo_dataset(str(base / "demo"), num_classes=NUM_CLASSES, train_per_class=2, val_per_class=2)
    images = base / "images"
    shutil.copytree(os.path.join(demo, "val"), images / "jpeg")
    first = read_rgb(os.path.join(demo, "val", "n00000001", "n00000001_0002.JPEG"))
    cv2.imwrite(str(images / "wide.png"), cv2.cvtColor(cv2.resize(first, (90, 70)), cv2.COLOR_RGB2BGR))
    (images / "broken.jpg").write_bytes(b"not an image")
    (images / "notes.txt").write_text("ignored: not an image extension")
    (images / ".ipynb_checkpoints").mkdir()
    shutil.copy(images / "wide.png", images / ".ipynb_checkpoints" / "wide.png")  # hidden: skipped

    out = str(base / "exported")
    written = export_model.main(["-c", config, "--load", weights, "--out", out,
                                 "--class-names", os.path.join(demo, "classes.txt")])
    return dict(base=base, config=config, weights=weights, demo=demo, images=str(images), out=out,
                written=written, names=read_class_names(os.path.join(demo, "classes.txt")))


def run_predict(capsys, args):
    code = predict.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_export_writes_model_and_metadata(setup):
    out = setup["out"]
    assert setup["written"] == [os.path.join(out, f) for f in ("inference.json", "inference.pdiparams",
                                                               "inference_meta.json")]
    assert all(os.path.getsize(p) > 0 for p in setup["written"])
    meta = read_metadata(out)
    assert meta["input_shape"] == [None, 3, 64, 64] and meta["input_dtype"] == "float32"
    assert meta["num_classes"] == NUM_CLASSES
    # the config's mappings, with the arguments left at their defaults written out
    assert meta["transforms"] == [{"name": "ResizeCropPct", "size": 64, "crop_pct": 0.875, "interpolation": "bilinear"},
                                  {"name": "Normalize", "mean": MEAN, "std": STD}]
    assert meta["class_names"] == ["red_stripes_0deg", "yellow_stripes_67.5deg", "spring_stripes_135deg",
                                   "azure_stripes_22.5deg", "magenta_stripes_90deg"]
    assert meta["source"] == {"config": setup["config"], "weights": setup["weights"]}


def test_exported_logits_equal_dygraph(setup):
    dygraph = DygraphPredictor(setup["config"], setup["weights"])
    exported = InferencePredictor(setup["out"])
    rng = np.random.default_rng(0)
    for batch in (3, 1, 2):  # the batch dimension is dynamic
        x = rng.normal(size=(batch, 3, 64, 64)).astype(np.float32)
        expected = dygraph(x)
        assert expected.shape == (batch, NUM_CLASSES)
        np.testing.assert_allclose(exported(x), expected, rtol=0, atol=1e-5)
    assert np.ptp(expected) > 1.0  # the logits are far from uniform
    image = os.path.join(setup["images"], "wide.png")  # 70 x 90: resized, then centre-cropped
    logits = exported(exported.preprocess(read_rgb(image))[None])
    np.testing.assert_allclose(logits, reference_logits(dygraph.model, image).numpy(), rtol=0, atol=1e-5)


def test_predict_directory_both_paths(setup, capsys):
    dygraph_model = DygraphPredictor(setup["config"], setup["weights"]).model
    names_file = os.path.join(setup["demo"], "classes.txt")
    results = {}
    for mode, args in (("exported", ["--inference-model", setup["out"]]),
                       ("dygraph", ["-c", setup["config"], "--load", setup["weights"], "--class-names", names_file])):
        code, out, err = run_predict(capsys, [setup["images"], *args, "--json", "--batch-size", "4"])
        assert code == 1  # broken.jpg
        assert f"cannot decode image {os.path.join(setup['images'], 'broken.jpg')}" in err
        assert "1 of 12 images could not be read" in err
        results[mode] = [json.loads(line) for line in out.splitlines()]
    exported, dygraph = results["exported"], results["dygraph"]
    paths = [r["image"] for r in exported]
    assert len(paths) == 11 and paths == sorted(paths) and os.path.join(setup["images"], "wide.png") in paths
    for e, d in zip(exported, dygraph):
        assert e["image"] == d["image"]
        ids, probs = [t["id"] for t in e["topk"]], np.array([t["prob"] for t in e["topk"]])
        assert ids == [t["id"] for t in d["topk"]]  # same top-5 from both paths
        np.testing.assert_allclose(probs, [t["prob"] for t in d["topk"]], atol=1e-5)
        assert [t["name"] for t in e["topk"]] == [setup["names"][i] for i in ids]
        assert len(ids) == 5 and np.all(np.diff(probs) <= 0) and probs.sum() <= 1 + 1e-6
        expected = reference_probs(dygraph_model, e["image"])
        assert ids == np.argsort(-expected, kind="stable")[:5].tolist()
        np.testing.assert_allclose(probs, expected[ids], atol=1e-5)


def test_predict_text_output_one_image(setup, capsys):
    image = os.path.join(setup["images"], "wide.png")
    code, out, _ = run_predict(capsys, [image, "--inference-model", setup["out"], "--topk", "2"])
    assert code == 0
    (line,) = out.splitlines()
    match = re.fullmatch(rf"{re.escape(image)}: (\d) (\S+) ([01]\.\d{{4}}) \| (\d) (\S+) ([01]\.\d{{4}})", line)
    assert match, line
    probs = reference_probs(DygraphPredictor(setup["config"], setup["weights"]).model, image)
    best = np.argsort(-probs)[:2]
    assert [int(match[1]), int(match[4])] == best.tolist()
    assert [match[2], match[5]] == [setup["names"][i] for i in best]
    assert [float(match[3]), float(match[6])] == pytest.approx(probs[best], abs=1e-4)


def test_predict_class_names_file_overrides_and_ids_fallback(setup, capsys):
    image = os.path.join(setup["images"], "wide.png")
    numbered = setup["base"] / "numbered.txt"
    numbered.write_text("".join(f"{i} class number {i}\n" for i in reversed(range(NUM_CLASSES))))
    _, out, _ = run_predict(capsys, [image, "--inference-model", setup["out"], "--json", "--class-names",
                                     str(numbered)])
    top = json.loads(out)["topk"]
    assert [t["name"] for t in top] == [f"class number {t['id']}" for t in top]
    _, out, _ = run_predict(capsys, [image, "-c", setup["config"], "--load", setup["weights"], "--json"])
    assert [t["name"] for t in json.loads(out)["topk"]] == [None] * 5  # 5 classes: no names known


def test_unreadable_image_cli_error(setup):
    broken = os.path.join(setup["images"], "broken.jpg")
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "predict.py"), broken,
                           "--inference-model", setup["out"]], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"error: cannot decode image {broken}" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_predict_bad_inputs_name_the_file(setup, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing"))):
        predict.main([str(tmp_path / "missing"), "--inference-model", setup["out"]])
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "inference_meta.json"))):
        predict.main([setup["images"], "--inference-model", str(tmp_path)])
    wrong = tmp_path / "three.txt"
    wrong.write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(wrong))} has 3 names but the model has 5 classes"):
        predict.main([setup["images"], "--inference-model", setup["out"], "--class-names", str(wrong)])


def test_export_config_errors(setup, tmp_path):
    weights = setup["weights"]
    no_val = tmp_path / "no_val.yaml"
    no_val.write_text(yaml.safe_dump({"model": MODEL}))
    with pytest.raises(ConfigError, match=rf"'data\.val\.transforms' of {re.escape(str(no_val))}"):
        export_model.main(["-c", str(no_val), "--load", weights, "--out", str(tmp_path / "a")])
    unsized = write_config(tmp_path / "unsized.yaml", transforms=[{"name": "Normalize"}])
    with pytest.raises(ConfigError, match=rf"data\.val of {re.escape(unsized)} must bring every image to one"):
        export_model.main(["-c", unsized, "--load", weights, "--out", str(tmp_path / "b")])
    small = write_config(tmp_path / "small.yaml", transforms=[{"name": "ResizeCropPct", "size": 32}])
    with pytest.raises(ValueError, match="produce 32x32 images, which the model rejects"):
        export_model.main(["-c", small, "--load", weights, "--out", str(tmp_path / "c")])
    assert not os.path.exists(tmp_path / "c")  # checked before anything is written


def test_export_official_checkpoint_matches_official_outputs(tmp_path):
    """The official LV-ViT checkpoint (.pth, read without torch) exported: equal to the PyTorch eval logits."""
    ref = load_npz("lvvit_t_d2.npz")
    config = write_config(tmp_path / "official.yaml", model={"name": "lvvit_tiny", "depth": 2, "num_classes": 10},
                          transforms=[{"name": "ResizeCropPct", "size": 224}, {"name": "Normalize"}])
    export_model.main(["-c", config, "--load", fixture_path("lvvit_t_d2.pth"), "--out", str(tmp_path / "out")])
    logits = InferencePredictor(str(tmp_path / "out"))(ref["x"])
    np.testing.assert_allclose(logits, ref["eval/out"], rtol=0, atol=1e-5)


def test_export_1000_classes_stores_imagenet_names(tmp_path):
    model_cfg = dict(MODEL, num_classes=1000)
    config = write_config(tmp_path / "in1k.yaml", model=model_cfg)
    weights = str(tmp_path / "w.pdparams")
    paddle.save(build_model(model_cfg).state_dict(), weights)
    export_model.main(["-c", config, "--load", weights, "--out", str(tmp_path / "out")])
    names = read_metadata(str(tmp_path / "out"))["class_names"]
    assert len(names) == 1000 and names[:2] == ["tench", "goldfish"] and names[-1] == "toilet tissue"


def test_bundled_imagenet_names():
    path = os.path.join(REPO_ROOT, "passl_tl", "data", "imagenet1k_classes.txt")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) == 1000
    wnids = [line.split(" ", 1)[0] for line in lines]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert all(re.fullmatch(r"n\d{8} \S.*", line) for line in lines)
    assert lines[0] == "n01440764 tench" and lines[1] == "n01443537 goldfish"
    assert lines[-1] == "n15075141 toilet tissue"
    assert imagenet_class_names() == [line.split(" ", 1)[1] for line in lines]
    assert resolve_class_names(1000) == imagenet_class_names()
    assert resolve_class_names(10) is None


def test_read_class_names_formats(tmp_path):
    def names(text):
        path = tmp_path / "names.txt"
        path.write_text(text)
        return read_class_names(str(path))

    assert names("2 two\n0 zero\n1 one and more\n") == ["zero", "one and more", "two"]
    assert names("n00000002 b name\nn00000001 a\n") == ["b name", "a"]  # wnid lines keep the file order
    assert names("great white shark\ntench\n\n") == ["great white shark", "tench"]
    assert names("n01440764\nn01443537\n") == ["n01440764", "n01443537"]  # bare wnids are the names
    with pytest.raises(ValueError, match=r"names\.txt: numeric ids must be 0\.\.1"):
        names("0 a\n2 b\n")
    with pytest.raises(ValueError, match="repeats n00000001"):
        names("n00000001 a\nn00000001 b\n")
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        read_class_names(str(tmp_path / "absent.txt"))
