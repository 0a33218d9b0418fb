"""The restricted reader of paddle.save files: what paddle.load returns, and never code from the file.

Payloads are pickles written byte by byte with the opcodes an attacker would use; each is first shown
to run (a control copy creates its marker file under the standard unpickler), then shown to be refused
by every path the framework reads such a file through, its marker never created.
"""
import collections
import hashlib
import os
import pickle
import random
import re
import shutil
import struct

import numpy as np
import paddle
import pytest

from passl_tl.engine.checkpoint import load_checkpoint
from passl_tl.models import create_model, load_weights
from passl_tl.utils import paddle_file
from passl_tl.utils.paddle_file import PaddleFileError, RefusedGlobalError, load_paddle_file

from tests.conftest import DEMO_CONFIG, small_run_overrides, train


# ----------------------------------------------------------------------------- helpers

def assert_same(ours, theirs, where="file"):
    """Equal types, keys in order, values; Tensors equal in dtype, shape, place, name (unless generated)."""
    assert type(ours) is type(theirs), f"{where}: {type(ours).__name__} != {type(theirs).__name__}"
    if isinstance(ours, dict):
        assert list(ours) == list(theirs), where
        for key in ours:
            assert_same(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(ours, paddle.Tensor):
        assert (ours.dtype, ours.shape, str(ours.place), ours.stop_gradient) == \
               (theirs.dtype, theirs.shape, str(theirs.place), theirs.stop_gradient), where
        if not theirs.name.startswith("generated_tensor"):  # a name from the file, not one made up on loading
            assert ours.name == theirs.name, where
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=where)
    elif isinstance(ours, np.ndarray):
        assert ours.dtype == theirs.dtype, where
        np.testing.assert_array_equal(ours, theirs, err_msg=where)
    else:
        assert ours == theirs, where


def text(value: str) -> bytes:
    """BINUNICODE (protocol 1+)."""
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def short(value: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4)."""
    data = value.encode()
    return b"\x8c" + bytes([len(data)]) + data


def touch(marker) -> str:
    return f"touch {marker}"


# Each builds a pickle that, unpickled by the standard unpickler, creates the file ``marker``.
PAYLOADS = {
    "GLOBAL os.system": (lambda m: b"\x80\x02cos\nsystem\n(" + text(touch(m)) + b"tR.", "os.system"),
    "GLOBAL posix.system, protocol 0": (lambda m: b"cposix\nsystem\n(V" + touch(m).encode() + b"\ntR.",
                                        "posix.system"),
    "STACK_GLOBAL, protocol 4": (lambda m: b"\x80\x04" + short("os") + short("system") + b"\x93" + short(touch(m))
                                 + b"\x85R.", "os.system"),
    "INST": (lambda m: b"(V" + touch(m).encode() + b"\nios\nsystem\n.", "os.system"),
    "OBJ": (lambda m: b"\x80\x02(cos\nsystem\n" + text(touch(m)) + b"o.", "os.system"),
    "REDUCE deep in a state dict": (  # {"model": {"w": 1, "b": open(marker, "w")}, "epoch": 0}
        lambda m: (b"\x80\x02}(" + text("model") + b"}(" + text("w") + b"K\x01" + text("b")
                   + b"cbuiltins\nopen\n(" + text(str(m)) + text("w") + b"tRu" + text("epoch") + b"K\x00u."),
        "builtins.open"),
    "builtins.eval under its Python 2 name": (
        lambda m: b"\x80\x02c__builtin__\neval\n(" + text(f"open({str(m)!r}, 'w')") + b"tR.", "__builtin__.eval"),
}


def close_files(obj) -> None:
    """Close the file objects a control payload opened."""
    if isinstance(obj, dict):
        for value in obj.values():
            close_files(value)
    elif hasattr(obj, "close"):
        obj.close()


def write_payload(tmp_path, kind: str, name: str) -> tuple[str, str, str]:
    """The payload ``kind`` as ``tmp_path/name``: (its path, its marker file, the global it names).
    A control copy run by the standard unpickler proves it creates its marker."""
    build, refused = PAYLOADS[kind]
    control = tmp_path / f"control_{name}.marker"
    close_files(pickle.loads(build(control)))
    assert control.exists(), f"the {kind} payload does not work: the test would prove nothing"
    marker = tmp_path / f"MARKER_{name}.marker"
    path = tmp_path / name
    path.write_bytes(build(marker))
    return str(path), str(marker), refused


def refusal(path: str, name: str) -> str:
    return re.escape(f"{path}: refused to load global {name} (only tensors, numbers, strings and containers are "
                     f"read from weight and checkpoint files)")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A 1-epoch demo run (80 images): its data root and output dir (read them, never write into them)."""
    base = tmp_path_factory.mktemp("safe_load_run")
    data_root, out = str(base / "demo"), str(base / "out")
    train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, out, epochs=1)])
    return data_root, out


# ----------------------------------------------------------------------------- what paddle.save writes

def _training_objects():
    paddle.seed(0)
    layer = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.BatchNorm1D(4))
    scheduler = paddle.optimizer.lr.CosineAnnealingDecay(0.1, 10)
    optimizer = paddle.optimizer.AdamW(scheduler, parameters=layer.parameters())
    layer.eval()  # BatchNorm's running statistics are saved all the same
    layer(paddle.ones([2, 3])).sum().backward()
    optimizer.step()
    scheduler.step()
    return layer, optimizer


def _state_dict():
    return {"f32": paddle.rand([3, 4]), "f16": paddle.rand([5]).astype("float16"),
            "bf16": paddle.rand([2, 3]).astype("bfloat16"), "f64": paddle.rand([2], dtype="float64"),
            "i64": paddle.arange(6, dtype="int64").reshape([2, 3]), "i32": paddle.to_tensor([1, -2], "int32"),
            "u8": paddle.to_tensor([0, 255], "uint8"), "bool": paddle.to_tensor([True, False]),
            "empty": paddle.zeros([0, 3]), "scalar": paddle.to_tensor(2.5), "big": paddle.rand([1 << 20])}


def _checkpoint():
    layer, optimizer = _training_objects()
    return {"model": layer.state_dict(), "optimizer": optimizer.state_dict(), "scaler": None,
            "hooks": {"ema": {"ema": layer.state_dict()}, "checkpoint": {"best_top1": 5.0}, "logger": {}},
            "epoch": 3, "iters_done": 10, "name": "ckpt", "ratio": 0.25, "big_int": 2 ** 70, "flag": True,
            "complex": 1 + 2j, "list": [1, "two", 3.0, None, (4, 5)], "tuple": ("a", ("b", 1)), "set": {1, 2},
            "numpy": np.arange(6, dtype=np.float32).reshape(2, 3), "np_scalar": np.float32(1.5),
            "np_int": np.int64(7), "python_rng": random.Random(0).getstate(),
            "numpy_rng": np.random.default_rng(0).bit_generator.state}


@pytest.mark.parametrize("protocol", [2, 3, 4])
@pytest.mark.parametrize("what", ["state_dict", "checkpoint", "tensor", "tensors_in_a_list", "arrays_only"])
def test_reads_back_what_paddle_load_returns(tmp_path, protocol, what):
    obj = {"state_dict": _state_dict, "checkpoint": _checkpoint,
           "tensor": lambda: paddle.arange(12, dtype="float32").reshape([3, 4]),
           "tensors_in_a_list": lambda: [paddle.ones([2]), {"x": paddle.zeros([1], "int64")}, "label", 3],
           "arrays_only": lambda: {"a": np.ones((2, 2), np.float16), "b": [np.arange(3)], "c": 1}}[what]()
    path = str(tmp_path / "file.pdparams")
    paddle.save(obj, path, protocol=protocol)
    assert_same(load_paddle_file(path), paddle.load(path))


def test_the_files_a_training_run_writes_read_back_as_with_paddle_load(small_run):
    _, out = small_run
    files = sorted(f for f in os.listdir(out) if f.endswith((".pdparams", ".pdckpt")))
    assert "final.pdparams" in files and any(f.startswith("ckpt_") for f in files)
    for name in files:
        assert_same(load_paddle_file(os.path.join(out, name)), paddle.load(os.path.join(out, name)), name)


def test_arrays_saved_in_slices_are_joined(tmp_path):
    """paddle.save at protocol 2/3 splits arrays over 1 GiB into ``key@@.i`` slices and an
    ``UnpackBigParamInfor@@`` entry (io_utils._unpack_saved_dict); the same layout, at a small size."""
    weight = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    flat = weight.flatten()
    saved = {"bias": np.ones(4, np.float32), "weight@@.0": flat[:10], "weight@@.1": flat[10:20],
             "weight@@.2": flat[20:], "StructuredToParameterName@@": {"bias": "linear_0.b_0", "weight": "conv.w_0"},
             "UnpackBigParamInfor@@": {"weight": {"OriginShape": weight.shape,
                                                  "slices": ["weight@@.0", "weight@@.1", "weight@@.2"]}}}
    path = tmp_path / "sliced.pdparams"
    for protocol in (2, 3):
        path.write_bytes(pickle.dumps(saved, protocol=protocol))
        loaded = load_paddle_file(str(path))
        assert_same(loaded, paddle.load(str(path)))
        assert list(loaded) == ["bias", "weight"] and loaded["weight"].name == "conv.w_0"
        np.testing.assert_array_equal(loaded["weight"].numpy(), weight)


def test_files_written_with_numpy_1_read_back(tmp_path):
    """NumPy 1 pickles arrays and scalars as numpy.core.multiarray.* (NumPy 2: numpy._core.multiarray.*)."""
    path = tmp_path / "numpy1.pdparams"
    paddle.save({"model": _state_dict(), "step": np.int64(3)}, str(path), protocol=2)
    data = path.read_bytes()
    assert data.count(b"cnumpy._core.multiarray\n") == 2  # _reconstruct and scalar, each written once (memo)
    path.write_bytes(data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    assert_same(load_paddle_file(str(path)), paddle.load(str(path)))


def test_allow_list_is_only_value_builders():
    allowed = {f"{module}.{name}" for module, name in paddle_file._ALLOWED}
    assert allowed == {"numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
                       "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.ndarray",
                       "numpy.dtype", "collections.OrderedDict", "builtins.tuple", "builtins.set",
                       "builtins.complex", "builtins.bytes", "_codecs.encode"}
    with pytest.raises(pickle.UnpicklingError, match="latin-1 text only"):
        paddle_file._ALLOWED["_codecs", "encode"]("x", "zlib_codec")  # no codec lookup (it would import encodings.*)
    for value in paddle_file._ALLOWED.values():  # a pickle's BUILD cannot alter what it is given
        with pytest.raises((AttributeError, TypeError)):
            setattr(value, "__doc__", "changed by a file")


# ----------------------------------------------------------------------------- payloads

@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_payloads_are_refused_naming_file_and_global(tmp_path, kind):
    path, marker, refused = write_payload(tmp_path, kind, "evil.pdparams")
    with pytest.raises(RefusedGlobalError, match=refusal(path, refused)) as error:
        load_paddle_file(path)
    assert isinstance(error.value, pickle.UnpicklingError) and isinstance(error.value, ValueError)
    assert not os.path.exists(marker)


def test_load_weights_and_train_load_refuse_a_payload(tmp_path, small_run):
    data_root, _ = small_run
    path, marker, refused = write_payload(tmp_path, "REDUCE deep in a state dict", "weights.pdparams")
    model = create_model("lvvit_tiny", embed_dim=48, depth=1, num_heads=2, stem_channels=8, num_classes=5)
    with pytest.raises(pickle.UnpicklingError, match=refusal(path, refused)):
        load_weights(model, path)
    path, marker, refused = write_payload(tmp_path, "GLOBAL os.system", "w.pdparams")
    with pytest.raises(pickle.UnpicklingError, match=refusal(path, refused)):
        train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, str(tmp_path / "out"), epochs=1),
                    "--load", path, "--evaluate-only"])
    assert not os.path.exists(marker) and not list(tmp_path.glob("MARKER_*"))


def test_resume_file_refuses_a_payload(tmp_path, small_run):
    data_root, _ = small_run
    path, marker, refused = write_payload(tmp_path, "STACK_GLOBAL, protocol 4", "ckpt_e0000_i000002.pdckpt")
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {path} is unreadable: ") + refusal(path, refused)):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {path} is unreadable: ") + refusal(path, refused)):
        train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, str(tmp_path / "out"), epochs=1),
                    "--resume", path])
    assert not os.path.exists(marker)


def test_resume_auto_skips_a_planted_checkpoint_without_running_it(tmp_path, small_run):
    data_root, reference_out = small_run
    out = tmp_path / "shared"
    out.mkdir()
    for name in ("ckpt_e0000_i000004.pdckpt", "ckpt_e0000_i000005.pdckpt"):
        for suffix in ("", ".sha256"):
            shutil.copy(os.path.join(reference_out, name + suffix), out / (name + suffix))
    planted, marker, refused = write_payload(out, "GLOBAL os.system", "ckpt_e0001_i000005.pdckpt")
    with open(planted, "rb") as f:  # a checksum beside it proves nothing about what it holds
        (out / "ckpt_e0001_i000005.pdckpt.sha256").write_text(hashlib.sha256(f.read()).hexdigest() + "\n")
    train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, str(out), epochs=1), "--resume", "auto"])
    log = (out / "log.txt").read_text(encoding="utf-8")
    assert re.search(re.escape(f"skipping checkpoint {planted}: checkpoint {planted} is unreadable: ")
                     + refusal(planted, refused) + re.escape("; falling back to the previous one"), log), log
    assert f"resumed from {out / 'ckpt_e0000_i000005.pdckpt'}" in log
    assert not os.path.exists(marker)


# ----------------------------------------------------------------------------- the other readers of given files

def test_predict_and_export_weights_refuse_a_payload(tmp_path):
    """tools/predict.py and tools/export_model.py read --load through DygraphPredictor (load_weights)."""
    from passl_tl.deploy import DygraphPredictor
    path, marker, refused = write_payload(tmp_path, "OBJ", "w.pdparams")
    with pytest.raises(pickle.UnpicklingError, match=refusal(path, refused)):
        DygraphPredictor(DEMO_CONFIG, path)
    assert not os.path.exists(marker)


def test_label_and_torch_readers_never_run_a_payload(tmp_path):
    """Token-label .npy files and shards are read with allow_pickle=False; torch files by an unpickler
    that turns every unknown global into an inert placeholder."""
    import zipfile
    from passl_tl.token_labels.files import BadLabelError, read_label_file
    from passl_tl.token_labels.pack import open_shard
    from passl_tl.utils.torch_checkpoint import Placeholder, load_torch_file
    class Touch:  # pickled as os.system("touch <marker>")
        def __init__(self, marker):
            self.marker = marker

        def __reduce__(self):
            return os.system, (touch(self.marker),)

    build, _ = PAYLOADS["GLOBAL os.system"]
    npy, control = tmp_path / "label.npy", tmp_path / "control.npy"  # object arrays: their data is a pickle
    np.save(control, np.array([Touch(tmp_path / "control_npy")], dtype=object), allow_pickle=True)
    np.load(control, allow_pickle=True)
    assert (tmp_path / "control_npy").exists()
    np.save(npy, np.array([Touch(tmp_path / "MARKER_npy")], dtype=object), allow_pickle=True)
    with pytest.raises(BadLabelError, match=re.escape(f"cannot read token-label file {npy}: Object arrays cannot be "
                                                      f"loaded when allow_pickle=False")):
        read_label_file(str(npy))
    for read in (lambda: read_label_file(str(npy), mmap_mode="r"),
                 lambda: open_shard(str(npy), 1, (1,), np.dtype("float16"))):
        with pytest.raises(BadLabelError, match="Python objects in dtype"):
            read()
    pth = tmp_path / "label.pth"
    with zipfile.ZipFile(pth, "w") as archive:
        archive.writestr("archive/data.pkl", build(tmp_path / "MARKER_pth"))
    assert isinstance(load_torch_file(str(pth)), Placeholder)
    assert not list(tmp_path.glob("MARKER_*"))


# ----------------------------------------------------------------------------- damaged files

def test_damaged_files_are_errors_naming_the_file(tmp_path, small_run):
    _, out = small_run
    truncated = tmp_path / "final.pdparams"
    data = open(os.path.join(out, "final.pdparams"), "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    cases = {"truncated": (truncated, "not readable as a paddle.save file"),
             "not a pickle": (b"\x00\x00\x00\x00binary tensor", "not readable as a paddle.save file"),
             "extension code": (b"\x80\x02\x82\x01.", "unregistered extension code"),
             "persistent id": (b"\x80\x02" + text("storage") + b"Q.", "persistent"),
             "BUILD on an allowed callable": (b"\x80\x02c_codecs\nencode\nN}" + text("__defaults__") + b"("
                                              + text("x") + text("latin1") + b"ts\x86b.", "__defaults__"),
             "bad slice info": (pickle.dumps({"UnpackBigParamInfor@@": {"w": {"slices": ["w@@.0"]}}}, 2), "w@@.0")}
    for name, (content, message) in cases.items():
        path = content if not isinstance(content, bytes) else tmp_path / f"{name.replace(' ', '_')}.pdparams"
        if isinstance(content, bytes):
            path.write_bytes(content)
        with pytest.raises(PaddleFileError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)):
            load_paddle_file(str(path))
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {truncated} is unreadable (truncated or corrupt?): "
                                                   f"{truncated}: not readable")):
        load_checkpoint(str(truncated))
    with pytest.raises(FileNotFoundError, match="nope.pdparams"):
        load_paddle_file(str(tmp_path / "nope.pdparams"))


def test_ordered_dict_and_names_survive(tmp_path):
    """A model's state dict (an OrderedDict of parameters) keeps its order and parameter names."""
    layer, _ = _training_objects()
    path = str(tmp_path / "layer.pdparams")
    paddle.save(collections.OrderedDict(layer.state_dict()), path)
    loaded = load_paddle_file(path)
    assert list(loaded) == list(layer.state_dict())
    assert [t.name for t in loaded.values()] == [t.name for t in layer.state_dict().values()]
