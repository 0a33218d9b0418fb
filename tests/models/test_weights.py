"""The torch-free checkpoint reader and strict ``load_weights``."""
import argparse
import logging
import pickle
import zipfile

import numpy as np
import paddle
import pytest

from passl_tl.models import create_model, load_weights
from passl_tl.models.pos_embed import patch_grid
from passl_tl.models.weights import select_state_dict
from passl_tl.utils.registry import ConfigError
from passl_tl.utils.torch_checkpoint import Placeholder, load_torch_file

from tests.conftest import fixture_path, load_npz, write_torch_zip
from tests.utils.test_safetensors_file import write_raw, write_safetensors


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
    ("reshape", r"shape mismatch: backbone.norm.weight \(file \[47\], model \[48\]\)"),
    ("pos_embed_width", r"shape mismatch: backbone.pos_embed \(file \[1, 197, 47\], model \[1, 197, 48\]\)"),
    ("pos_embed_grid", (r"backbone.pos_embed \(file \[1, 196, 48\], model \[1, 197, 48\]\) cannot be resized: "
                        r"its 195 patch positions")),
])
def test_load_weights_is_strict(tmp_path, change, message):
    state = {k: v.numpy() for k, v in _small_model().state_dict().items()}
    if change == "extra":
        state["backbone.extra"] = np.zeros(3, "float32")
    elif change == "drop":
        del state["backbone.norm.weight"]
    elif change == "reshape":
        state["backbone.norm.weight"] = state["backbone.norm.weight"][1:]
    elif change == "pos_embed_width":
        state["backbone.pos_embed"] = state["backbone.pos_embed"][:, :, 1:]
    else:
        state["backbone.pos_embed"] = state["backbone.pos_embed"][:, 1:]
    path = _save(tmp_path, state)
    for skip_mismatched_head in (False, True):
        with pytest.raises(ValueError, match=message) as err:
            load_weights(_small_model(), path, skip_mismatched_head=skip_mismatched_head)
        assert path in str(err.value)


def test_official_checkpoint_into_wrong_architecture():
    path = fixture_path("lvvit_t_d2.pth")
    with pytest.raises(ValueError, match=r"unexpected keys: backbone\.blocks\.1\.norm1\.weight"):
        load_weights(create_model("lvvit_tiny", depth=1, num_classes=10), path)
    with pytest.raises(ValueError, match=r"shape mismatch: backbone\.patch_embed\.conv1\.weight "
                                         r"\[file: patch_embed\.conv1\.weight\] "
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


@pytest.mark.parametrize("name, write, layout", [
    ("model.safetensors", write_safetensors, "safetensors state dict"),
    ("pytorch_model.bin", write_torch_zip, "plain torch state dict"),
])
def test_hub_weight_files_load_like_the_pth(tmp_path, name, write, layout):
    """timm's files on the Hugging Face hub hold the official state dict: loaded as from the .pth."""
    ref = load_npz("lvvit_t_d2.npz")
    path = write(tmp_path / name, {k[len("sd/"):]: v for k, v in ref.items() if k.startswith("sd/")})
    paddle.seed(1)
    via_pth, via_hub = (create_model("lvvit_tiny", depth=2, num_classes=10) for _ in range(2))
    load_weights(via_pth, fixture_path("lvvit_t_d2.pth"))
    assert load_weights(via_hub, path) == f"loaded 47 tensors from {name} ({layout})"
    for key, value in via_pth.state_dict().items():
        np.testing.assert_array_equal(via_hub.state_dict()[key].numpy(), value.numpy(), err_msg=key)
    x = paddle.to_tensor(ref["x"])
    via_pth.eval()
    via_hub.eval()
    np.testing.assert_array_equal(via_hub(x).numpy(), via_pth(x).numpy())
    np.testing.assert_allclose(via_hub(x).numpy(), ref["eval/out"], rtol=0, atol=1e-5)


def test_safetensors_errors_name_the_file(tmp_path):
    model = create_model("lvvit_tiny", depth=2, num_classes=10)
    damaged = write_raw(tmp_path / "damaged.safetensors", b'{"w": ')
    with pytest.raises(ValueError, match=f"{damaged}: the safetensors header is not UTF-8 JSON"):
        load_weights(model, damaged)
    ref = load_npz("lvvit_t_d2.npz")
    plain = write_safetensors(tmp_path / "model.safetensors",
                              {k[len("sd/"):]: v for k, v in ref.items() if k.startswith("sd/")})
    with pytest.raises(ValueError, match=rf"{plain}: no state dict found; .* \(expected one of state_dict_ema\)"):
        load_weights(model, plain, use_ema=True)


def test_truncated_tensor_storage_is_an_error_not_an_out_of_bounds_read(tmp_path):
    from tests.conftest import fixture_path
    damaged = str(tmp_path / "damaged.pth")
    with zipfile.ZipFile(fixture_path("lvvit_t_d2.pth")) as source, zipfile.ZipFile(damaged, "w") as target:
        storages = [n for n in source.namelist() if "/data/" in n]
        largest = max(storages, key=lambda n: source.getinfo(n).file_size)
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, data[: len(data) // 2] if name == largest else data)
    with pytest.raises(ValueError, match=rf"{damaged}: cannot read the checkpoint: a tensor of size .* needs "
                                         rf"element \d+ of a storage of \d+ \(truncated or corrupt file\?\)"):
        load_torch_file(damaged)


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


# ----------------------------------------------------------------------------- fine-tuning

def _cubic(t, a=-0.75):
    """Keys' cubic convolution kernel with torch's coefficient a = -0.75."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _bicubic_matrix(n_in, n_out):
    """[n_out, n_in] weights of torch's 1-D bicubic resize (align_corners=False): source position
    (i + 0.5) * n_in / n_out - 0.5, four taps around it, indices clamped to the border."""
    src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    left = np.floor(src)
    matrix = np.zeros((n_out, n_in))
    for tap in (-1, 0, 1, 2):
        np.add.at(matrix, (np.arange(n_out), np.clip(left + tap, 0, n_in - 1).astype(int)), _cubic(src - left - tap))
    return matrix


def _reference_resize(pos_embed, old_grid, new_grid):
    """Independent float64 reference of the official pos_embed resize."""
    grid = pos_embed[0, 1:].reshape(*old_grid, -1).astype(np.float64)
    rows, cols = _bicubic_matrix(old_grid[0], new_grid[0]), _bicubic_matrix(old_grid[1], new_grid[1])
    return np.einsum("Rr,rcd,Cc->RCd", rows, grid, cols).reshape(-1, pos_embed.shape[-1])


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def passl_log():
    """Messages logged to ``passl_tl`` at INFO or above during the test."""
    logger, handler = logging.getLogger("passl_tl"), _Messages()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_bicubic_reference_is_a_resampler():
    # The reference itself: an identity at equal size, rows summing to one, and a = -0.75 overshoot.
    np.testing.assert_allclose(_bicubic_matrix(14, 14), np.eye(14), atol=1e-12)
    np.testing.assert_allclose(_bicubic_matrix(14, 24).sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(_bicubic_matrix(14, 24)[0, :2], [1.097928, -0.097928], atol=1e-6)


@pytest.mark.parametrize("old_size, new_size, old_grid, new_grid", [
    (224, 384, (14, 14), (24, 24)),
    (224, (224, 320), (14, 14), (14, 20)),
    ((192, 256), (384, 512), (12, 16), (24, 32)),
    (384, 224, (24, 24), (14, 14)),
])
def test_pos_embed_is_resized_like_the_official_fine_tuning(tmp_path, passl_log, old_size, new_size, old_grid,
                                                            new_grid):
    source = create_model("lvvit_tiny", embed_dim=48, depth=1, num_heads=2, stem_channels=8, num_classes=5,
                          img_size=old_size)
    state = {k: v.numpy() for k, v in source.state_dict().items()}
    pos_embed = np.random.RandomState(0).standard_normal(state["backbone.pos_embed"].shape).astype("float32")
    state["backbone.pos_embed"] = pos_embed
    path = _save(tmp_path, state)
    target = create_model("lvvit_tiny", embed_dim=48, depth=1, num_heads=2, stem_channels=8, num_classes=5,
                          img_size=new_size)
    change = f"resized backbone.pos_embed from {old_grid[0]}x{old_grid[1]} to {new_grid[0]}x{new_grid[1]}"
    assert load_weights(target, path) == f"loaded {len(state)} tensors from w.pdparams (paddle state dict); {change}"
    assert passl_log == [f"{path}: {change}"]
    loaded = target.state_dict()
    resized = loaded["backbone.pos_embed"].numpy()
    assert resized.shape == (1, 1 + new_grid[0] * new_grid[1], 48)
    np.testing.assert_array_equal(resized[:, 0], pos_embed[:, 0])  # the cls position, bit-exact
    np.testing.assert_allclose(resized[0, 1:], _reference_resize(pos_embed, old_grid, new_grid), rtol=0, atol=1e-5)
    for key, value in state.items():
        if key != "backbone.pos_embed":
            np.testing.assert_array_equal(loaded[key].numpy(), value, err_msg=key)


def test_patch_grid_inference():
    assert patch_grid(196, (24, 24)) == (14, 14)
    assert patch_grid(196, (24, 32)) == (14, 14)  # square first: official checkpoints are square
    assert patch_grid(192, (24, 32)) == (12, 16)  # else the model's aspect ratio
    assert patch_grid(195, (14, 14)) is None
    assert patch_grid(0, (14, 14)) is None


def test_official_checkpoint_fine_tuned_at_384():
    ref = load_npz("lvvit_t_d2.npz")
    model = create_model("lvvit_tiny", depth=2, num_classes=10, img_size=384)
    report = load_weights(model, fixture_path("lvvit_t_d2.pth"))
    assert report == ("loaded 47 tensors from lvvit_t_d2.pth (plain torch state dict); "
                      "resized backbone.pos_embed from 14x14 to 24x24")
    resized = model.backbone.pos_embed.numpy()
    np.testing.assert_array_equal(resized[:, 0], ref["sd/pos_embed"][:, 0])
    np.testing.assert_allclose(resized[0, 1:], _reference_resize(ref["sd/pos_embed"], (14, 14), (24, 24)), atol=1e-5)
    # The same image at 384 gives logits of the same kind as at 224, not the same logits.
    model.eval()
    x = paddle.to_tensor(ref["x"])
    out = model(paddle.nn.functional.interpolate(x, size=[384, 384], mode="bicubic")).numpy()
    assert out.shape == (2, 10) and np.isfinite(out).all()
    change = np.linalg.norm(out - ref["eval/out"]) / np.linalg.norm(ref["eval/out"])
    assert 1e-3 < change < 0.5


def test_mismatched_head_is_an_error_unless_skipped(tmp_path, passl_log):
    source, target = _small_model(0), create_model("lvvit_tiny", embed_dim=48, depth=1, num_heads=2,
                                                   stem_channels=8, num_classes=7)
    path = _save(tmp_path, source.state_dict())
    with pytest.raises(ValueError, match=r"shape mismatch: head\.cls_head\.weight \(file \[48, 5\], model \[48, 7\]\), "
                                         r"head\.cls_head\.bias \(file \[5\], model \[7\]\)"):
        load_weights(target, path)
    initial = {k: v.numpy().copy() for k, v in target.state_dict().items()}
    report = load_weights(target, path, skip_mismatched_head=True)
    kept = ("kept the model's head.cls_head.weight (file [48, 5], model [48, 7]), head.cls_head.bias "
            "(file [5], model [7]), head.aux_head.weight (file [48, 5], model [48, 7]), head.aux_head.bias "
            "(file [5], model [7])")
    assert report == f"loaded {len(initial) - 4} tensors from w.pdparams (paddle state dict); {kept}"
    assert passl_log == [f"{path}: {kept}"]
    for key, value in target.state_dict().items():
        expected = initial[key] if key.startswith("head.") else source.state_dict()[key].numpy()
        np.testing.assert_array_equal(value.numpy(), expected, err_msg=key)


def test_skipping_the_head_keeps_everything_else_strict():
    path = fixture_path("lvvit_t_d2.pth")
    model = create_model("lvvit_tiny", depth=2, num_classes=100, img_size=384)
    report = load_weights(model, path, skip_mismatched_head=True)
    assert report.startswith("loaded 43 tensors from lvvit_t_d2.pth (plain torch state dict); "
                             "resized backbone.pos_embed from 14x14 to 24x24; kept the model's head.cls_head.weight")
    with pytest.raises(ValueError, match=r"shape mismatch: backbone\.patch_embed\.conv1\.weight"):
        load_weights(create_model("lvvit_tiny", depth=2, num_classes=100, stem_channels=32), path,
                     skip_mismatched_head=True)


def test_errors_name_the_official_key_too(tmp_path):
    """A mismatch in an official checkpoint is reported with our key and the file's own key."""
    from tests.conftest import fixture_path
    model = create_model("lvvit_tiny", depth=2, num_classes=7)  # the fixture has 10 classes
    with pytest.raises(ValueError, match=r"head\.aux_head\.bias \[file: aux_head\.bias\]"):
        load_weights(model, fixture_path("lvvit_t_d2.pth"))


def test_use_ema_is_for_official_checkpoints(tmp_path):
    import paddle
    model = create_model("lvvit_tiny", depth=1, num_classes=3, embed_dim=48, num_heads=2, img_size=32)
    path = str(tmp_path / "w.pdparams")
    paddle.save(model.state_dict(), path)
    with pytest.raises(ConfigError, match="final_ema.pdparams"):
        load_weights(model, path, use_ema=True)
