"""ONNX export (paddle2onnx) and ONNX Runtime inference: every family's official fixture model gives the Paddle
model's and the official eval logits; export_model.py --onnx and predict.py --backend; the errors."""
import json
import os
import re

import cv2
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from passl_tl import build_model
from passl_tl.deploy import OnnxPredictor, Preprocessor, export_model, exported_backend, load_exported, read_metadata
from passl_tl.deploy import onnx_model
from passl_tl.models import create_model, load_weights
from passl_tl.models.backbones.volo import fold
from passl_tl.utils.inference import save_program

from tests.conftest import TOOLS_DIR, close, fixture_path, import_tool, load_npz
from tests.deploy.test_deploy import MODEL, NUM_CLASSES, write_config
from tests.engine.test_eval_forward import FAMILIES as ONEDNN_FAMILIES
from tests.utils.test_quiet_output import run_python

MISSING = onnx_model.missing_packages()
needs_onnx = pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed: "
                                                      "pip install -e \".[onnx]\" (the test extra has them)")
export_tool = import_tool("export_model")  # tools/export_model.py
predict = import_tool("predict")  # tools/predict.py
# every family's fixture model, as the oneDNN test builds them, and plain DeiT besides its distilled variant
FAMILIES = {**ONEDNN_FAMILIES, "deit_tiny_d2": ("deit_tiny_patch16_224", dict(depth=2, num_classes=10))}


def preprocessor(size: int) -> Preprocessor:
    return Preprocessor([{"name": "ResizeCropPct", "size": size}, {"name": "Normalize"}], "the test")


@needs_onnx
@pytest.mark.parametrize("case", list(FAMILIES))
def test_onnx_runtime_gives_the_paddle_and_official_logits(case, tmp_path):
    ref = load_npz(f"{case}.npz")
    preset, overrides = FAMILIES[case]
    model = create_model(preset, **overrides)
    load_weights(model, fixture_path(f"{case}.pth"))
    out = str(tmp_path)
    written = export_model(model, out, preprocessor(ref["x"].shape[-1]), onnx=True)
    assert os.path.join(out, "model.onnx") in written
    meta = read_metadata(out)["onnx"]
    assert meta["file"] == "model.onnx" and meta["opset"] == onnx_model.OPSET == 17
    assert 0 <= meta["check_max_abs_diff"] < 1e-5
    predictor = OnnxPredictor(out, threads=1)
    logits = predictor(ref["x"])
    with paddle.no_grad():
        expected = model(paddle.to_tensor(ref["x"])).numpy()
    close(logits, expected)
    close(logits, ref["eval/out"])
    close(predictor(ref["x"][1:]), expected[1:])  # the batch size is dynamic
    (declared,) = predictor.session.get_inputs()
    assert declared.shape[1:] == list(ref["x"].shape[1:]) and isinstance(declared.shape[0], str)


@pytest.mark.parametrize("shape, kernel, stride, padding", [
    ([2, 8, 28, 28], 3, 2, 1),  # VOLO's outlook attention at 224 px
    ([2, 3, 27, 25], 3, 2, 1),  # odd sides: the last row and column of windows overhang
    ([1, 2, 10, 10], 3, 1, 1),
    ([1, 2, 12, 12], 2, 2, 0),
    ([1, 2, 13, 11], 5, 3, 2),
])
def test_volo_fold_is_paddles_fold_bit_for_bit(shape, kernel, stride, padding):
    """VOLO's fold (a transposed convolution paddle2onnx converts) and its gradient equal F.fold's exactly."""
    batch, channels, height, width = shape
    windows = [(side + 2 * padding - kernel) // stride + 1 for side in (height, width)]
    paddle.seed(0)
    cols = paddle.randn([batch, channels * kernel * kernel, windows[0] * windows[1]])
    cols.stop_gradient = False
    upstream = paddle.randn(shape)
    expected = F.fold(cols, [height, width], kernel, stride, padding)
    ours = fold(cols, [height, width], kernel, stride, padding)
    np.testing.assert_array_equal(ours.numpy(), expected.numpy())
    (grad_expected,), (grad_ours,) = (paddle.grad(y, cols, upstream) for y in (expected, ours))
    np.testing.assert_array_equal(grad_ours.numpy(), grad_expected.numpy())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny LV-ViT's config and weights, and a folder of images."""
    base = tmp_path_factory.mktemp("onnx")
    paddle.seed(5)
    model = build_model(MODEL)
    for param in model.head.parameters():
        param.set_value(0.2 * paddle.randn(param.shape))  # logits spread about 1: a stable top-5 order
    weights = str(base / "w.pdparams")
    paddle.save(model.state_dict(), weights)
    images = base / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 256, (50 + 10 * i, 70, 3), dtype=np.uint8))
    return dict(base=base, args=["-c", write_config(base / "model.yaml"), "--load", weights], images=str(images))


@needs_onnx
def test_export_tool_onnx_and_predict_backends(tiny, capsys, monkeypatch):
    onnx_dir, paddle_dir = str(tiny["base"] / "with_onnx"), str(tiny["base"] / "paddle_only")
    written = export_tool.main([*tiny["args"], "--out", onnx_dir, "--onnx"])
    assert [os.path.basename(p) for p in written] == ["inference.json", "inference.pdiparams", "model.onnx",
                                                      "inference_meta.json"]
    assert re.search(r"ONNX opset 17: ONNX Runtime's logits are the model's to \S+ \(max abs difference",
                     capsys.readouterr().out)
    export_tool.main([*tiny["args"], "--out", paddle_dir])
    capsys.readouterr()
    assert read_metadata(paddle_dir)["onnx"] is None
    assert exported_backend(onnx_dir) == "onnxruntime" and exported_backend(paddle_dir) == "paddle"
    assert load_exported(onnx_dir, threads=1).session.get_session_options().intra_op_num_threads == 1

    results = {}
    for name, args in (("auto", []), ("paddle", ["--backend", "paddle"]), ("onnxruntime", ["--backend", "onnxruntime"]),
                       ("paddle only", [])):
        model_dir = paddle_dir if name == "paddle only" else onnx_dir
        assert predict.main([tiny["images"], "--inference-model", model_dir, "--json", "--threads", "1", *args]) == 0
        results[name] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(results["auto"]) == 3 and len(results["auto"][0]["topk"]) == NUM_CLASSES
    for name in ("paddle", "onnxruntime", "paddle only"):
        for row, other in zip(results["auto"], results[name], strict=True):
            assert row["image"] == other["image"]
            assert [t["id"] for t in row["topk"]] == [t["id"] for t in other["topk"]]
            np.testing.assert_allclose([t["prob"] for t in row["topk"]], [t["prob"] for t in other["topk"]], atol=1e-5)

    with pytest.raises(FileNotFoundError, match=f"{re.escape(paddle_dir)} has no ONNX model: export it with "
                                                r"tools/export_model\.py --onnx"):
        predict.main([tiny["images"], "--inference-model", paddle_dir, "--backend", "onnxruntime"])
    with pytest.raises(SystemExit):
        predict.main([tiny["images"], *tiny["args"], "--backend", "paddle"])
    assert "--backend applies to --inference-model DIR only" in capsys.readouterr().err
    monkeypatch.setattr(onnx_model, "missing_packages", lambda names: list(names))
    assert exported_backend(onnx_dir) == "paddle"  # auto without onnxruntime


def test_export_without_the_packages_names_the_extra(tiny, monkeypatch):
    monkeypatch.setattr(onnx_model, "missing_packages", lambda names: list(names))
    out = tiny["base"] / "never"
    with pytest.raises(ImportError, match=r"ONNX export needs paddle2onnx and onnxruntime: pip install -e "
                                          r"\"\.\[onnx\]\""):
        export_tool.main([*tiny["args"], "--out", str(out), "--onnx"])
    assert not out.exists()  # asked before anything is written
    with pytest.raises(ImportError, match="ONNX inference needs onnxruntime"):
        onnx_model.create_session(str(out / "model.onnx"), 1)


def test_the_export_tool_without_the_packages_prints_one_line(tiny):
    """Run as a user runs it: the missing extra is one line on stderr and exit code 2, not a traceback."""
    out = tiny["base"] / "never_either"
    run = run_python(f"""
        import runpy, sys
        sys.argv = ["export_model.py", *{[*tiny["args"], "--out", str(out), "--onnx"]!r}]
        sys.modules["paddle2onnx"] = None  # not installed, as far as imports can tell
        runpy.run_path({os.path.join(TOOLS_DIR, "export_model.py")!r}, run_name="__main__")
    """)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == 'error: ONNX export needs paddle2onnx: pip install -e ".[onnx]"\n'
    assert not out.exists()


class Fold(nn.Layer):
    """Paddle's own fold op, which paddle2onnx 2.1 cannot convert."""

    def __init__(self):
        super().__init__()
        self.scale = self.create_parameter([1], default_initializer=nn.initializer.Constant(1.0))

    def forward(self, x):
        return F.fold(x * self.scale, [4, 4], 3, 2, 1)


@needs_onnx
def test_unconvertible_operator_is_an_error_not_an_abort(tmp_path):
    """paddle2onnx aborts its process on an operator it lacks: the conversion runs in a child, the error shows
    its output."""
    program, params = save_program(Fold(), str(tmp_path / "fold"), [1, 18, 4])
    with pytest.raises(RuntimeError, match=r"(?s)paddle2onnx \S+ could not convert .*fold\.json to ONNX opset 17 "
                                           r"\(exit code -6\).*unsupported operators"):
        onnx_model.convert(program, params, str(tmp_path / "fold.onnx"))
    assert not os.path.exists(tmp_path / "fold.onnx")


@needs_onnx
def test_logits_differing_from_the_model_are_refused(tmp_path):
    """The check after conversion compares with the dygraph model; a model that differs from the saved
    program (as a mis-converted operator would) is refused and nothing is left behind."""
    paddle.seed(1)
    model = create_model("regnety_002", num_classes=4)
    model.eval()
    program, params = save_program(model, str(tmp_path / "inference"), [None, 3, 32, 32])
    bias = model.head.fc.bias
    bias.set_value(bias + 1.0)  # every logit moves by 1
    with pytest.raises(ValueError, match=r"differing from the Paddle model's by up to 1 on 2 random images "
                                         r".*model\.onnx not written"):
        onnx_model.write_onnx(model, program, params, str(tmp_path), 32, 32)
    assert sorted(os.listdir(tmp_path)) == ["inference.json", "inference.pdiparams"]
