"""LV-ViT pieces: BatchNorm running stats, DropPath, init, head, presets and configs."""
import json
import math

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from passl_tl.models import Classifier, build_model, create_model
from passl_tl.models.heads import TokenLabelHead
from passl_tl.models.layers import DropPath, TorchBatchNorm2D, trunc_normal_
from passl_tl.utils.registry import MODELS, ConfigError

from tests.conftest import fixture_path


def test_batchnorm_tracks_unbiased_variance_like_torch():
    paddle.seed(3)
    bn = TorchBatchNorm2D(4)  # Paddle momentum 0.9 == torch momentum 0.1
    x = np.random.RandomState(0).standard_normal((2, 4, 3, 3)).astype("float32") * 2 + 1
    bn.train()
    out = bn(paddle.to_tensor(x)).numpy()
    mean, biased, unbiased = x.mean((0, 2, 3)), x.var((0, 2, 3)), x.var((0, 2, 3), ddof=1)
    # normalised with the biased batch variance (n = 18, so biased vs unbiased differ by 6%)
    np.testing.assert_allclose(out, (x - mean[:, None, None]) / np.sqrt(biased[:, None, None] + 1e-5), atol=1e-5)
    np.testing.assert_allclose(bn._mean.numpy(), 0.1 * mean, atol=1e-6)
    np.testing.assert_allclose(bn._variance.numpy(), 0.9 + 0.1 * unbiased, atol=1e-6)
    bn.eval()
    np.testing.assert_allclose(
        bn(paddle.to_tensor(x)).numpy(),
        (x - bn._mean.numpy()[:, None, None]) / np.sqrt(bn._variance.numpy()[:, None, None] + 1e-5), atol=1e-5)


def test_drop_path():
    layer = DropPath(0.5)
    x = paddle.ones([256, 3, 4])
    layer.train()
    per_sample = layer(x).numpy().reshape(256, -1)
    assert set(np.unique(per_sample)) == {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()  # whole samples are dropped
    layer.eval()
    assert layer(x) is x


def test_trunc_normal_bounds_are_absolute():
    paddle.seed(0)
    w = paddle.zeros([400, 500])
    trunc_normal_(w, std=0.02)
    w = w.numpy()
    assert abs(w.std() - 0.02) < 2e-4 and abs(w.mean()) < 2e-4
    assert np.abs(w).max() > 0.08  # bounds ±2 are absolute: nothing is cut at ±2 std (0.04)
    narrow = paddle.zeros([20000])
    trunc_normal_(narrow, std=1.0, a=-0.5, b=0.5)
    narrow = narrow.numpy()
    assert -0.5 <= narrow.min() < -0.49 and 0.49 < narrow.max() <= 0.5
    assert 0.27 < narrow.std() < 0.29  # N(0, 1) cut to ±0.5: nearly uniform (std 0.280)


def test_official_init_distributions():
    paddle.seed(0)
    model = create_model("lvvit_tiny", depth=2, num_classes=10)
    for name, layer in model.named_sublayers():
        if isinstance(layer, nn.Linear):
            w = layer.weight.numpy()
            assert abs(w.std() - 0.02) < 1e-3 and np.abs(w).max() > 0.04, name
            if layer.bias is not None:
                assert not layer.bias.numpy().any(), name
        elif isinstance(layer, nn.LayerNorm):
            assert (layer.weight.numpy() == 1).all() and not layer.bias.numpy().any(), name
        elif isinstance(layer, nn.Conv2D):  # torch default: U(±1/sqrt(fan_in)) for weight and bias
            bound = 1 / math.sqrt(math.prod(layer.weight.shape[1:]))
            w = layer.weight.numpy()
            assert 0.98 * bound < np.abs(w).max() <= bound, name
            assert abs(w.std() - bound / math.sqrt(3)) < 0.03 * bound, name
            if layer.bias is not None:
                assert np.abs(layer.bias.numpy()).max() <= bound, name
        elif isinstance(layer, TorchBatchNorm2D):
            assert (layer.weight.numpy() == 1).all() and not layer.bias.numpy().any(), name
            assert not layer._mean.numpy().any() and (layer._variance.numpy() == 1).all(), name
    pos = model.backbone.pos_embed.numpy()
    assert abs(pos.std() - 0.02) < 1e-3 and np.abs(pos).max() > 0.04


def test_eval_adds_per_sample_token_max():
    paddle.seed(1)
    head = TokenLabelHead(6, 5)
    head.eval()
    tokens = np.random.RandomState(2).standard_normal((3, 1 + 4, 6)).astype("float32")
    out = head(paddle.to_tensor(tokens), (2, 2)).numpy()
    w_cls, b_cls = head.cls_head.weight.numpy(), head.cls_head.bias.numpy()
    w_aux, b_aux = head.aux_head.weight.numpy(), head.aux_head.bias.numpy()
    x_cls = tokens[:, 0] @ w_cls + b_cls
    x_aux = tokens[:, 1:] @ w_aux + b_aux
    np.testing.assert_allclose(out, x_cls + 0.5 * x_aux.max(axis=1), atol=1e-6)
    # the PASSL port's bug (sample 0's token max for every sample) gives a different answer
    assert np.abs(out - (x_cls + 0.5 * x_aux[0].max(axis=0))).max() > 1e-3


def _soft_ce(logits, target):
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return -(target * logp).sum(-1).mean()


def test_train_head_unmixes_aux_and_plain_soft_label_loss():
    rng = np.random.RandomState(4)
    head = TokenLabelHead(6, 5, cls_weight=0.7, dense_weight=1.3)
    head.train()
    tokens = paddle.to_tensor(rng.standard_normal((2, 1 + 12, 6)).astype("float32"))
    box = (1, 0, 3, 2)  # on a 3 x 4 grid: 4 of 12 tokens
    mixed, plain = head(tokens, (3, 4), box), head(tokens, (3, 4))
    np.testing.assert_array_equal(mixed["cls"].numpy(), plain["cls"].numpy())
    expected = plain["aux"].numpy().reshape(2, 3, 4, 5).copy()
    expected[:, 1:3, 0:2] = expected[::-1, 1:3, 0:2]
    np.testing.assert_array_equal(mixed["aux"].numpy(), expected.reshape(2, 12, 5))

    target = rng.dirichlet(np.ones(5), size=2).astype("float32")
    lam = 1 - 4 / 12
    cls_t = lam * target + (1 - lam) * target[::-1]
    x_cls, x_aux = mixed["cls"].numpy(), mixed["aux"].numpy()
    want = 0.7 * _soft_ce(x_cls, cls_t) + 1.3 * _soft_ce(x_aux, np.repeat(target[:, None], 12, axis=1))
    got = head.loss(mixed, paddle.to_tensor(target))
    assert got.shape == [] and abs(float(got) - want) < 1e-5
    with pytest.raises(ValueError, match=r"\[2, 5, 14\]"):
        head.loss(mixed, paddle.zeros([2, 5, 13]))


def test_presets_route_overrides_and_reject_unknown_keys():
    model = create_model("lvvit_tiny", depth=2, num_classes=10, img_size=384)
    assert isinstance(model, Classifier) and len(model.backbone.blocks) == 2
    assert model.head.cls_head.weight.shape == [240, 10] and model.grid_size == (24, 24)
    assert model.backbone.pos_embed.shape == [1, 577, 240]

    model = MODELS.build({"name": "lvvit_tiny", "num_classes": 10, "drop_path_rate": 0.1})
    rates = [block.drop_path.drop_prob for block in model.backbone.blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.1, 12))
    assert model.no_weight_decay() == {"backbone.pos_embed", "backbone.cls_token"}
    assert model.no_weight_decay() <= dict(model.named_parameters()).keys()

    with pytest.raises(ConfigError, match="unknown key 'widht' for model 'lvvit_small'.*embed_dim.*num_classes"):
        create_model("lvvit_small", widht=3)
    with pytest.raises(ConfigError, match="unknown model 'lvvit_huge'"):
        create_model("lvvit_huge")


def test_build_model_from_config():
    backbone = {"name": "LVViT", "embed_dim": 48, "depth": 1, "num_heads": 2, "stem_channels": 8}
    model = build_model({"model": {"name": "Classifier", "backbone": backbone,
                                   "head": {"name": "TokenLabelHead", "num_classes": 7}}})
    assert model.head.aux_head.weight.shape == [48, 7]
    model.eval()
    assert model(paddle.zeros([2, 3, 224, 224])).shape == [2, 7]
    with pytest.raises(ValueError, match="token grid"):
        model(paddle.zeros([1, 3, 192, 192]))
    assert len(build_model({"name": "lvvit_tiny", "depth": 1}).backbone.blocks) == 1
    with pytest.raises(ConfigError, match="unknown key 'depht' in model.backbone"):
        build_model({"model": {"name": "Classifier", "backbone": {**backbone, "depht": 2},
                               "head": {"name": "TokenLabelHead", "num_classes": 7}}})


# Presets vs the official registered functions (params.json), full size with 1000 classes.
PARAM_CASES = [("lvvit_tiny", "lvvit_t@224"), ("lvvit_small", "lvvit_s@224"), ("lvvit_small", "lvvit_s@384")]
SLOW_PARAM_CASES = [("lvvit_medium", "lvvit_m@224"), ("lvvit_medium", "lvvit_m@384"), ("lvvit_medium", "lvvit_m@448"),
                    ("lvvit_large", "lvvit_l@224"), ("lvvit_large", "lvvit_l@448"), ("lvvit_large", "lvvit_l@512")]


@pytest.mark.parametrize("preset, key", PARAM_CASES + [pytest.param(*c, marks=pytest.mark.slow)
                                                       for c in SLOW_PARAM_CASES])
def test_parameter_counts_match_official(preset, key):
    with open(fixture_path("params.json")) as f:
        official = json.load(f)["lvvit"][key]
    model = create_model(preset, img_size=official["kwargs"].get("img_size", 224))
    state = model.state_dict()
    bn_stats = [k for k in state if k.endswith(("._mean", "._variance"))]
    params = [p for n, p in model.named_parameters() if n not in bn_stats]
    assert sum(math.prod(p.shape) for p in params) == official["params_total"]
    assert all(not p.stop_gradient for p in params)
    # buffers: BatchNorm running stats plus one num_batches_tracked per BN (no Paddle counterpart)
    assert sum(math.prod(state[k].shape) for k in bn_stats) == official["buffers_numel"] - len(bn_stats) // 2
    assert len(state) == official["state_dict_tensors"] - len(bn_stats) // 2
