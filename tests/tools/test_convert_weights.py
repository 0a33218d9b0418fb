"""tools/convert_weights.py: official LV-ViT checkpoints (any layout) -> .pdparams, without PyTorch."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from passl_tl.models import create_model, load_weights, preset_inference
from passl_tl.models.weights import linear_weight_names
from passl_tl.utils.registry import MODELS, ConfigError
from passl_tl.utils.torch_checkpoint import load_torch_file

from tests.conftest import REPO_ROOT, fixture_path, import_tool, load_npz, write_torch_zip
from tests.utils.test_safetensors_file import write_safetensors

convert_weights = import_tool("convert_weights")  # tools/convert_weights.py

TOOL = os.path.join(REPO_ROOT, "tools", "convert_weights.py")
@pytest.fixture(scope="module")
def official():
    """The fixture's official state dict (``sd/``, torch names and layouts) and its reference outputs."""
    ref = load_npz("lvvit_t_d2.npz")
    return {k[len("sd/"):]: v for k, v in ref.items() if k.startswith("sd/")}, ref


def convert(tmp_path, src, *args, name="out.pdparams"):
    dst = str(tmp_path / name)
    assert convert_weights.main(["--src", src, "--dst", dst, *args]) == dst
    return dst


def weights(path):
    return {k: v.numpy() for k, v in paddle.load(path).items()}


def test_writer_gives_what_the_reader_reads(tmp_path, official):
    state, _ = official
    checkpoint = {"state_dict": state, "epoch": 3, "half": state["norm.weight"].astype("float16")}
    read = load_torch_file(write_torch_zip(tmp_path / "w.pth", checkpoint))
    assert read["epoch"] == 3 and read["half"].dtype == np.float16 and list(read["state_dict"]) == list(state)
    for key, value in state.items():
        assert read["state_dict"][key].dtype == value.dtype, key
        np.testing.assert_array_equal(read["state_dict"][key], value, err_msg=key)


def test_converted_fixture_gives_the_official_logits(tmp_path, capsys, official):
    _, ref = official
    dst = convert(tmp_path, fixture_path("lvvit_t_d2.pth"), "--model", "lvvit_tiny", "-o", "depth=2", "num_classes=10")
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"{fixture_path('lvvit_t_d2.pth')}: plain torch state dict, 50 tensors",
                       "model: lvvit_tiny(depth=2, img_size=224, num_classes=10)"]
    lines = [" ".join(line.split()) for line in out]
    for line in ("patch_embed.bn1.running_var -> backbone.patch_embed.bn1._variance",
                 "blocks.1.attn.qkv.weight -> backbone.blocks.1.attn.qkv.weight (transposed)",
                 "head.weight -> head.cls_head.weight (transposed)", "aux_head.bias -> head.aux_head.bias",
                 "patch_embed.bn3.num_batches_tracked dropped (no Paddle counterpart)"):
        assert line in lines
    assert out[-2:] == ["mapped 47 tensors (10 transposed), dropped 3", f"wrote {dst}"]
    assert os.listdir(tmp_path) == ["out.pdparams"]  # no temporary file left behind

    model = create_model("lvvit_tiny", depth=2, num_classes=10)
    assert load_weights(model, dst) == "loaded 47 tensors from out.pdparams (paddle state dict)"
    model.eval()
    np.testing.assert_allclose(model(paddle.to_tensor(ref["x"])).numpy(), ref["eval/out"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout, suffix, found", [
    ("plain", ".pth", "plain torch state dict"),
    ("model", ".pth", "torch checkpoint['model']"),
    ("state_dict", ".pth.tar", "torch checkpoint['state_dict']"),
    ("state_dict_ema", ".pt", "torch checkpoint['state_dict_ema']"),
    ("module.", ".pth.tar", "plain torch state dict"),
    ("plain", ".bin", "plain torch state dict"),  # the Hugging Face hub's pytorch_model.bin
    ("plain", ".safetensors", "safetensors state dict"),
])
def test_every_checkpoint_layout(tmp_path, capsys, official, layout, suffix, found):
    state, _ = official
    if layout == "plain":
        checkpoint = state
    elif layout == "module.":  # saved from DataParallel
        checkpoint = {f"module.{k}": v for k, v in state.items()}
    else:
        checkpoint = {layout: state, "epoch": 7, "version": 2}
    write = write_safetensors if suffix == ".safetensors" else write_torch_zip
    src = write(tmp_path / f"ckpt{suffix}", checkpoint)
    dst = convert(tmp_path, src, "-o", "depth=2")  # preset inferred: lvvit_tiny
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"{src}: {found}, 50 tensors", "model: lvvit_tiny(depth=2, img_size=224, num_classes=10)"]
    expected = weights(convert(tmp_path, fixture_path("lvvit_t_d2.pth"), "-o", "depth=2", name="ref.pdparams"))
    converted = weights(dst)
    assert list(converted) == list(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(converted[key], value, err_msg=key)


def test_use_ema_chooses_the_ema_weights(tmp_path, official):
    state, _ = official
    ema = {**state, "norm.weight": state["norm.weight"] + 1}
    src = write_torch_zip(tmp_path / "last.pth.tar", {"state_dict": state, "state_dict_ema": ema, "epoch": 299})
    norm = {flag: weights(convert(tmp_path, src, "-o", "depth=2", *flag, name=f"{len(flag)}.pdparams"))
            ["backbone.norm.weight"] for flag in ((), ("--use-ema",))}
    np.testing.assert_array_equal(norm[()], state["norm.weight"])
    np.testing.assert_array_equal(norm[("--use-ema",)], ema["norm.weight"])
    with pytest.raises(ValueError, match=r"no state dict found; top-level keys: cls_token, pos_embed, .* "
                                         r"\(expected one of state_dict_ema\)"):
        convert(tmp_path, fixture_path("lvvit_t_d2.pth"), "-o", "depth=2", "--use-ema")


def full_depth(state, depth):
    """The fixture's official state dict with its two blocks repeated to ``depth`` blocks."""
    out = {k: v for k, v in state.items() if not k.startswith("blocks.")}
    for i in range(depth):
        source = f"blocks.{i % 2}."
        out.update({f"blocks.{i}.{k[len(source):]}": v for k, v in state.items() if k.startswith(source)})
    return out


def test_preset_inferred_from_shapes(tmp_path, capsys, official):
    state, _ = official
    assert preset_inference.preset_arguments("lvvit_tiny", state, {}) == {"img_size": 224, "num_classes": 10}
    assert preset_inference.matching_presets(full_depth(state, 12), {}) == ["lvvit_tiny"]
    assert preset_inference.matching_presets(full_depth(state, 16), {}) == []  # lvvit_small is 384 wide
    assert preset_inference.matching_presets(state, {}) == []
    assert preset_inference.matching_presets(state, {"depth": 2}) == ["lvvit_tiny"]

    # LV-ViT-T as released (12 blocks), fine-tuned at 384: img_size comes from pos_embed.
    at_384 = create_model("lvvit_tiny", depth=2, num_classes=10, img_size=384)
    load_weights(at_384, fixture_path("lvvit_t_d2.pth"))
    src = write_torch_zip(tmp_path / "lvvit_t_384.pth",
                          {**full_depth(state, 12), "pos_embed": at_384.backbone.pos_embed.numpy()})
    dst = convert(tmp_path, src)
    assert capsys.readouterr().out.splitlines()[1] == "model: lvvit_tiny(img_size=384, num_classes=10)"
    converted = weights(dst)
    assert len(converted) == len(create_model("lvvit_tiny", num_classes=10).state_dict())
    np.testing.assert_array_equal(converted["backbone.pos_embed"], at_384.backbone.pos_embed.numpy())

    with pytest.raises(ConfigError, match=r"\(50 tensors, embed_dim 240, depth 2, pos_embed tokens 197, "
                                          r"head 10 classes\) matches no registered preset; choose the nearest with "
                                          r"--model NAME \(lvvit_large, lvvit_medium, lvvit_small, lvvit_tiny\) "
                                          r"and give the arguments it differs in with -o, e.g. -o depth=2"):
        convert(tmp_path, fixture_path("lvvit_t_d2.pth"))


def test_other_image_size_resizes_pos_embed(tmp_path, capsys):
    dst = convert(tmp_path, fixture_path("lvvit_t_d2.pth"), "-o", "depth=2", "img_size=384")
    out = capsys.readouterr().out.splitlines()
    assert "model: lvvit_tiny(depth=2, img_size=384, num_classes=10)" in out
    assert "resized backbone.pos_embed from 14x14 to 24x24" in out
    expected = create_model("lvvit_tiny", depth=2, num_classes=10, img_size=384)
    load_weights(expected, fixture_path("lvvit_t_d2.pth"))
    np.testing.assert_array_equal(weights(dst)["backbone.pos_embed"], expected.backbone.pos_embed.numpy())


@pytest.mark.parametrize("change, message", [
    ("drop", r"missing keys: backbone\.norm\.weight"),
    ("extra", r"unexpected keys: backbone\.blocks\.0\.attn\.q_bias"),
    ("reshape", r"shape mismatch: head\.cls_head\.bias \(file \[9\], model \[10\]\)"),
])
def test_missing_unexpected_or_misshapen_keys_are_errors(tmp_path, official, change, message):
    state, _ = official
    state = dict(state)
    if change == "drop":
        del state["norm.weight"]
    elif change == "extra":
        state["blocks.0.attn.q_bias"] = np.zeros(240, "float32")
    else:
        state["head.bias"] = state["head.bias"][:9]
    src = write_torch_zip(tmp_path / "bad.pth", state)
    with pytest.raises(ValueError, match=message) as err:
        convert(tmp_path, src, "--model", "lvvit_tiny", "-o", "depth=2", "num_classes=10")
    assert src in str(err.value)
    assert not os.path.exists(tmp_path / "out.pdparams")


def test_command_line_errors_exit_without_traceback(tmp_path, official):
    state, _ = official
    src = write_torch_zip(tmp_path / "bad.pth", {k: v for k, v in state.items() if k != "aux_head.bias"})
    dst = str(tmp_path / "out.pdparams")
    run = subprocess.run([sys.executable, TOOL, "--src", src, "--dst", dst, "--model", "lvvit_tiny", "-o", "depth=2"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.splitlines()[-1].startswith(f"error: cannot load {src} into Classifier; "
                                                  "missing keys: head.aux_head.bias")
    assert not os.path.exists(dst)


def test_argument_errors(tmp_path):
    with pytest.raises(ConfigError, match="the output must be a .pdparams file"):
        convert(tmp_path, fixture_path("lvvit_t_d2.pth"), name="out.pth")
    with pytest.raises(ConfigError, match="override 'depth.x=2': model arguments have no sub-keys"):
        convert(tmp_path, fixture_path("lvvit_t_d2.pth"), "-o", "depth.x=2")
    with pytest.raises(ConfigError, match="unknown key 'depht' for model 'lvvit_tiny'"):
        convert(tmp_path, fixture_path("lvvit_t_d2.pth"), "--model", "lvvit_tiny", "-o", "depht=2")


# (fixture, official layout, preset, -o overrides): DeiT {'model': sd}, T2T-ViT {'state_dict_ema': sd},
# the RegNetY teacher a plain state dict; the fixtures' constructors used reduced depth/num_classes.
OTHER_FAMILIES = [
    ("deit_tiny_distilled_d2", "torch checkpoint['model']", "deit_tiny_distilled_patch16_224", {"depth": 2}),
    ("deit_tiny_d2", "torch checkpoint['model']", "deit_tiny_patch16_224", {"depth": 2}),
    ("t2t_vit_t14_d1", "torch checkpoint['state_dict_ema']", "t2t_vit_t_14", {"depth": 1}),
    ("regnety_002_c10", "plain torch state dict", "regnety_002", {}),
]


@pytest.mark.parametrize("case, layout, preset, overrides", OTHER_FAMILIES)
def test_other_families_convert_to_the_official_logits(tmp_path, capsys, case, layout, preset, overrides):
    """DeiT, T2T-ViT and RegNetY official checkpoints: the preset is inferred from the shapes
    (num_classes from the head, img_size from pos_embed), and the converted weights give the
    official eval logits."""
    ref = load_npz(f"{case}.npz")
    texts = [f"{k}={v}" for k, v in overrides.items()]
    dst = convert(tmp_path, fixture_path(f"{case}.pth"), *(["-o", *texts] if texts else []))
    lines = capsys.readouterr().out.splitlines()
    assert layout in lines[0] and lines[1].startswith(f"model: {preset}(")
    model = create_model(preset, num_classes=10, **overrides)
    load_weights(model, dst)
    model.eval()
    np.testing.assert_allclose(model(paddle.to_tensor(ref["x"])).numpy(), ref["eval/out"], atol=1e-5)


def test_presets_that_differ_only_in_depth_need_model(tmp_path):
    """T2T-ViT-7/10/12 share their width: with the depth overridden the shapes cannot tell them apart."""
    src = fixture_path("t2t_vit_7_d2.pth")
    with pytest.raises(ConfigError, match=r"matches several presets \(t2t_vit_10, t2t_vit_12, t2t_vit_7\); "
                                          r"choose one with --model NAME$"):  # no -o hint: the shapes fit each
        convert(tmp_path, src, "-o", "depth=2")
    ref = load_npz("t2t_vit_7_d2.npz")
    model = create_model("t2t_vit_7", num_classes=10, depth=2)
    load_weights(model, convert(tmp_path, src, "--model", "t2t_vit_7", "-o", "depth=2"))
    model.eval()
    np.testing.assert_allclose(model(paddle.to_tensor(ref["x"])).numpy(), ref["eval/out"], atol=1e-5)


def test_a_checkpoint_of_no_known_family_lists_every_preset():
    with pytest.raises(ConfigError) as err:
        preset_inference.choose_preset({"fc.weight": np.zeros((2, 4), np.float32)}, {}, "x.pth")
    listed = str(err.value).split("--model NAME (")[1].split(")")[0].split(", ")
    assert listed[0] == "deit_base_distilled_patch16_224" and listed[-1] == "volo_d5" and "lvvit_tiny" in listed
    assert set(listed) == set(MODELS.names()) - {"Classifier"}  # every preset, not the generic model


@pytest.mark.slow
def test_deit_base_checkpoint_picks_the_preset_of_its_size():
    """Full-size DeiT-B states (shapes only): 224 and 384 presets both fit once img_size is read
    from pos_embed; the preset named after that size is chosen."""
    import paddle as pd
    for preset in ("deit_base_patch16_224", "deit_base_distilled_patch16_384"):
        with pd.LazyGuard():
            model = create_model(preset)
        linear = linear_weight_names(model)
        shape = {k: list(v.shape)[::-1] if k in linear else list(v.shape) for k, v in model.state_dict().items()}
        state = {official: np.broadcast_to(np.float32(0), shape[ours])
                 for official, ours in _official_names(model).items()}
        assert preset_inference.choose_preset(state, {}, "x.pth") == preset


def _official_names(model):
    """Our state-dict keys under their official names (the inverse of the conversion's renaming)."""
    heads = {f"head.{ours}": official for official, ours in model.head.OFFICIAL_NAMES.items()}
    names = {}
    for key in model.state_dict():
        prefix = next((p for p in heads if key.startswith(p + ".")), None)
        names[heads[prefix] + key[len(prefix):] if prefix else key[len("backbone."):]] = key
    return names


@pytest.mark.parametrize("case", ["volo_mini_img224", "volo_mini_img192"])
def test_volo_converts_to_the_official_logits(tmp_path, capsys, case):
    """VOLO's reduced fixture: D1-D4 differ only in the overridden layers/widths, so --model picks one; img_size
    comes from the [1, rows, cols, C] pos_embed and the converted weights give the official logits."""
    ref = load_npz(f"{case}.npz")
    src = fixture_path(f"{case}.pth")
    kwargs = json.loads(str(ref["meta"]))["constructor_kwargs"]  # the fixture's own architecture
    arch = {k: kwargs[k] for k in ("layers", "embed_dims", "num_heads")}
    shape = ["-o", *(f"{k}={json.dumps(v)}" for k, v in arch.items())]
    with pytest.raises(ConfigError, match=r"matches several presets \(volo_d1, volo_d2, volo_d3, volo_d4\)"):
        convert(tmp_path, src, *shape)
    dst = convert(tmp_path, src, "--model", "volo_d1", *shape)
    assert capsys.readouterr().out.splitlines()[1].startswith("model: volo_d1(")
    model = create_model("volo_d1", **arch, img_size=kwargs["img_size"], num_classes=kwargs["num_classes"])
    load_weights(model, dst)
    model.eval()
    np.testing.assert_allclose(model(paddle.to_tensor(ref["x"])).numpy(), ref["eval/out"], atol=1e-5)
