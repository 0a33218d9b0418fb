"""RegNetY against timm 0.3.2 (the reference fixtures): outputs, checkpoint layouts, sizes, architecture.

Tolerances follow the fixture README: logits, features and stage outputs atol 1e-5 (the float32
reference is within 8e-7 of float64; the smallest plausible port mistake moves features by 2e-3).
"""
import json
import math

import numpy as np
import paddle
import pytest

from passl_tl.models import create_model, load_weights
from passl_tl.models.backbones.regnet import Bottleneck, regnet_stages
from passl_tl.utils.registry import ConfigError

from tests.conftest import close, fixture_path, load_npz, write_torch_zip

PRESETS = ["regnety_002", "regnety_004", "regnety_016", "regnety_032", "regnety_160"]
CASE = "regnety_002_c10"


@pytest.fixture(scope="module")
def records():
    with open(fixture_path("params.json")) as f:
        return json.load(f)["regnet"]


@pytest.fixture(scope="module")
def ref():
    return load_npz(f"{CASE}.npz")


def fixture_model(path=None):
    model = create_model("regnety_002", num_classes=10)
    load_weights(model, path or fixture_path(f"{CASE}.pth"))
    model.eval()
    return model


def test_eval_outputs_and_stages(ref):
    model = fixture_model()
    seen = {}

    def keep(name):
        return lambda _, inputs, output: seen.__setitem__(name, output.numpy())

    backbone = model.backbone
    handles = [getattr(backbone, name).register_forward_post_hook(keep(name)) for name in backbone.stage_names]
    handles.append(backbone.register_forward_post_hook(keep("pooled")))
    with paddle.no_grad():
        out = model(paddle.to_tensor(ref["x"])).numpy()
    for handle in handles:
        handle.remove()
    close(out, ref["eval/out"])
    close(seen["s4"], ref["eval/features"])
    close(seen["pooled"][:, 0], ref["eval/pooled"])  # token 0: the pooled features, then the positions
    for name in ("s1", "s2", "s3"):
        close(seen[name], ref[f"eval/{name}"])
    with paddle.no_grad():
        close(backbone.forward_features(paddle.to_tensor(ref["x"])).numpy(), ref["eval/features"])


def test_deit_teacher_layout_loads_identically(tmp_path, ref):
    """DeiT's teacher file keeps the same state dict under ``'model'``."""
    state = {k[len("sd/"):]: v for k, v in ref.items() if k.startswith("sd/")}
    assert len(state) == 318
    wrapped = write_torch_zip(tmp_path / "teacher.pth", {"model": state, "epoch": 299})
    plain, teacher = fixture_model().state_dict(), fixture_model(wrapped).state_dict()
    assert list(plain) == list(teacher)
    for key in plain:
        np.testing.assert_array_equal(teacher[key].numpy(), plain[key].numpy(), err_msg=key)
    assert plain["head.fc.weight"].shape == [368, 10]  # Linear transposed to Paddle's [in, out]
    np.testing.assert_array_equal(plain["head.fc.weight"].numpy(), state["head.fc.weight"].T)
    np.testing.assert_array_equal(plain["backbone.s3.b2.se.fc1.bias"].numpy(), state["s3.b2.se.fc1.bias"])


@pytest.mark.parametrize("preset", PRESETS)
def test_derived_stages(records, preset):
    cfg, arch = records[preset]["model_cfg"], records[preset]["architecture"]
    stages = regnet_stages(cfg["w0"], cfg["wa"], cfg["wm"], cfg["depth"], cfg["group_w"], cfg["bottle_ratio"])
    assert [tuple(s) for s in stages] == [(s["depth"], s["out_chs"], s["group_width"]) for s in arch["stages"]]


@pytest.fixture(scope="module", params=PRESETS)
def built(request):
    return request.param, create_model(request.param)


def test_sizes(records, built):
    preset, model = built
    record = records[preset]
    bns = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.BatchNorm2D)]
    trainable = sum(p.numel().item() for p in model.parameters() if not p.stop_gradient)
    stats = sum(bn._mean.numel().item() + bn._variance.numel().item() for bn in bns)
    assert trainable == record["params_total"]
    assert stats + len(bns) == record["buffers_numel"]  # + torch's one-element num_batches_tracked per BN
    assert len(model.state_dict()) + len(bns) == record["state_dict_tensors"]


def test_built_architecture(records, built):
    """Widths, depths, strides, groups and SE widths of the built layers, as timm built them."""
    preset, model = built
    arch, backbone = records[preset]["architecture"], model.backbone
    assert backbone.stem.conv.weight.shape == [arch["stem_width"], 3, 3, 3]
    assert backbone.embed_dim == arch["num_features"] == model.head.fc.weight.shape[0]
    assert backbone.stage_names == [s["name"] for s in arch["stages"]]
    for spec in arch["stages"]:
        blocks = list(getattr(backbone, spec["name"]).children())
        assert len(blocks) == spec["depth"]
        for j, block in enumerate(blocks):
            conv2 = block.conv2.conv
            assert conv2._groups == spec["groups"]
            assert conv2.weight.shape == [spec["bottleneck_chs"], spec["bottleneck_chs"] // spec["groups"], 3, 3]
            assert conv2._stride == [spec["stride"] if j == 0 else 1] * 2
            assert list(block.conv1.conv._stride) == [1, 1]
            assert block.conv1.conv.weight.shape[1] == (spec["in_chs"] if j == 0 else spec["out_chs"])
            assert block.conv3.conv.weight.shape[0] == spec["out_chs"]
            se_width = spec["se_chs_first_block"] if j == 0 else spec["se_chs_other_blocks"]
            assert block.se.fc1.weight.shape[:2] == [se_width, spec["bottleneck_chs"]]
            assert (block.downsample is not None) == (j == 0 and spec["downsample_first_block"])


def assert_std(weight, expected, rtol):
    assert abs(float(weight.std()) / expected - 1) < rtol


def test_official_init():
    paddle.seed(0)
    model = create_model("regnety_002")
    backbone = model.backbone
    assert_std(backbone.s4.b2.conv1.conv.weight, math.sqrt(2.0 / 368), 0.02)  # kaiming fan_out: 368 · 1 · 1
    assert_std(backbone.s4.b1.conv2.conv.weight, math.sqrt(2.0 / (368 * 9)), 0.02)  # fan_out ignores groups
    se = backbone.s4.b2.se.fc1  # 368 -> 92: weight kaiming fan_out, bias PyTorch's default U(±1/sqrt(368))
    assert_std(se.weight, math.sqrt(2.0 / 92), 0.05)
    assert 0.5 / math.sqrt(368) < float(se.bias.abs().max()) <= 1 / math.sqrt(368)
    blocks = [layer for layer in backbone.sublayers() if isinstance(layer, Bottleneck)]
    assert len(blocks) == 13
    for block in blocks:
        assert not block.conv3.bn.weight.numpy().any()  # zero_init_last_bn
        np.testing.assert_array_equal(block.conv2.bn.weight.numpy(), 1.0)
        np.testing.assert_array_equal(block.conv2.bn.bias.numpy(), 0.0)
    assert_std(model.head.fc.weight, 0.01, 0.02)
    assert not model.head.fc.bias.numpy().any()


def test_mix_box_refused_without_a_grid_and_train_forward():
    """Without img_size a RegNet takes any image size and has no token grid for MixToken; its tokens are the
    pooled features, then every position of the last map."""
    model = create_model("regnety_002", num_classes=10)
    model.train()
    x = paddle.randn([2, 3, 64, 64])
    assert model(x).shape == [2, 10]
    with pytest.raises(ConfigError, match="MixToken boxes to its stem map, which needs model.img_size"):
        model(x, (0, 0, 1, 1))
    assert model.grid_size is None and model.backbone.num_prefix_tokens == 1
    tokens = model.backbone(x)
    feature_map = model.backbone.feature_map(x).numpy()
    np.testing.assert_allclose(tokens[:, 0].numpy(), feature_map.mean(axis=(2, 3)), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(tokens[:, 1:].numpy(), feature_map.reshape(2, feature_map.shape[1], -1)
                                  .transpose(0, 2, 1))


def test_overrides_and_bad_config():
    model = create_model("regnety_002", num_classes=7, stem_width=16)
    assert model.backbone.stem.conv.weight.shape == [16, 3, 3, 3] and model.head.fc.weight.shape == [368, 7]
    assert model.backbone.s1.b1.se.fc1.weight.shape[0] == 4  # round(16 * 0.25): from the block input
    with pytest.raises(ConfigError, match="stages"):
        create_model("regnety_002", depth=3)
    with pytest.raises(ConfigError, match="multiple of 8"):
        create_model("regnety_002", w0=20)
