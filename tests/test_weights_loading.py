"""The torch-free checkpoint reader and strict ``load_weights``."""
import argparse
import pickle
import zipfile

import numpy as np
import paddle
import pytest
from conftest import fixture_path, load_npz

from passl_tl.models import create_model, load_weights
from passl_tl.models.weights import select_state_dict
from passl_tl.utils.registry import ConfigError
from passl_tl.utils.torch_checkpoint import Placeholder, load_torch_file


@pytest.mark.parametrize("case, layout", [
    ("lvvit_t_d2", "plain torch state dict"),
    ("lvvit_lstem_d1", "plain torch state dict"),
    ("deit_tiny_distilled_d2", "torch checkpoint['model']"),
    ("t2t_vit_7_d2", "torch checkpoint['state_dict_ema']"),
])
def test_torch_reader_equals_fixture_arrays(case, layout):
    state, found = select_state_dict(load_torch_file(fixture_path(f"{case}.pth")), case)
    assert found == layout
    ref = {k[len("sd/"):]: v for k, v in load_npz(f"{case}.npz").items() if k.startswith("sd/")}
    assert list(state) == list(ref)
    for key, value in state.items():
        assert value.dtype == ref[key].dtype and value.shape == ref[key].shape, key
        np.testing.assert_array_equal(value, ref[key], err_msg=key)


def _small_model(seed=0):
    paddle.seed(seed)
    return create_model("lvvit_tiny", embed_dim=48, depth=1, num_heads=2, stem_channels=8, num_classes=5)


def _save(tmp_path, state, name="w.pdparams"):
    path = str(tmp_path / name)
    paddle.save(state, path)
    return path


def test_pdparams_roundtrip(tmp_path):
    source, target = _small_model(0), _small_model(1)
    path = _save(tmp_path, source.state_dict())
    report = load_weights(target, path)
    assert report == f"loaded {len(source.state_dict())} tensors from w.pdparams (paddle state dict)"
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[key].numpy(), value.numpy(), err_msg=key)


def test_half_precision_weights_are_cast_to_the_model_dtype(tmp_path):
    half = {k: v.numpy().astype("float16") for k, v in _small_model(0).state_dict().items()}
    model = _small_model(1)
    load_weights(model, _save(tmp_path, half))
    for key, value in model.state_dict().items():
        assert value.dtype == paddle.float32, key
        np.testing.assert_array_equal(value.numpy(), half[key].astype("float32"), err_msg=key)


@pytest.mark.parametrize("change, message", [
    ("extra", "unexpected keys: backbone.extra"),
    ("drop", "missing keys: backbone.norm.weight"),
    ("reshape", r"shape mismatch: backbone.pos_embed \(file \[1, 196, 48\], model \[1, 197, 48\]\)"),
])
def test_load_weights_is_strict(tmp_path, change, message):
    state = {k: v.numpy() for k, v in _small_model().state_dict().items()}
    if change == "extra":
        state["backbone.extra"] = np.zeros(3, "float32")
    elif change == "drop":
        del state["backbone.norm.weight"]
    else:
        state["backbone.pos_embed"] = state["backbone.pos_embed"][:, 1:]
    path = _save(tmp_path, state)
    with pytest.raises(ValueError, match=message) as err:
        load_weights(_small_model(), path)
    assert path in str(err.value)


def test_official_checkpoint_into_wrong_architecture():
    path = fixture_path("lvvit_t_d2.pth")
    with pytest.raises(ValueError, match=r"unexpected keys: backbone\.blocks\.1\.norm1\.weight"):
        load_weights(create_model("lvvit_tiny", depth=1, num_classes=10), path)
    with pytest.raises(ValueError, match=r"shape mismatch: backbone\.patch_embed\.conv1\.weight "
                                         r"\(file \[64, 3, 7, 7\], model \[128, 3, 7, 7\]\)"):
        load_weights(create_model("lvvit_tiny", depth=2, num_classes=10, stem_channels=128), path)


def test_unsupported_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown weights format"):
        load_weights(_small_model(), str(tmp_path / "w.npz"))
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"rest")
    with pytest.raises(ValueError, match="legacy"):
        load_weights(_small_model(), str(legacy))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_weights(_small_model(), str(junk))


def test_reader_never_imports_classes_from_the_file(tmp_path):
    path = tmp_path / "train.pth.tar"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("train/data.pkl", pickle.dumps({"args": argparse.Namespace(lr=0.1), "epoch": 3}, 2))
    checkpoint = load_torch_file(str(path))
    assert checkpoint["epoch"] == 3
    assert isinstance(checkpoint["args"], Placeholder) and checkpoint["args"].state == {"lr": 0.1}
    assert repr(checkpoint["args"]) == "<unloaded argparse.Namespace>"
    with pytest.raises(ValueError, match="no state dict found; top-level keys: args, epoch"):
        load_weights(_small_model(), str(path))
