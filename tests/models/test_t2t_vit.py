"""T2T-ViT against the official PyTorch outputs recorded in the reference fixtures.

Tolerance per the fixture README: outputs and features atol 1e-5. The frozen tables (sinusoid
``pos_embed``, performer ``w``) are compared exactly.
"""
import json

import numpy as np
import paddle
import pytest

from passl_tl.batch.pipeline import Batch
from passl_tl.engine.optimizers import AdamW, decay_parameter_names
from passl_tl.models import build_model, create_model, load_weights
from passl_tl.token_labels.mixtoken import flip_box

from tests.conftest import capture, close, fixture_path, load_npz

# Constructor table of the fixture README, as overrides of the matching preset.
CASES = {
    "t2t_vit_7_d2": ("t2t_vit_7", dict(depth=2, num_classes=10)),
    "t2t_vit_t14_d1": ("t2t_vit_t_14", dict(depth=1, num_classes=10)),
}
PERFORMER_W = ["backbone.tokens_to_token.attention1.w", "backbone.tokens_to_token.attention2.w"]


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    return request.param



def build(case, seed=0):
    paddle.seed(seed)
    preset, overrides = CASES[case]
    return create_model(preset, **overrides)


def fresh_model(case, seed=0):
    model = build(case, seed)
    load_weights(model, fixture_path(f"{case}.pth"))
    model.eval()
    return model






def test_eval_outputs(case, ref):
    model = fresh_model(case)
    t2t = model.backbone.tokens_to_token
    attention1, h1 = capture(t2t.attention1)
    t2t_tokens, h2 = capture(t2t)
    tokens, h3 = capture(model.backbone)
    with paddle.no_grad():
        out = model(paddle.to_tensor(ref["x"])).numpy()
    for handle in (h1, h2, h3):
        handle.remove()
    assert attention1["value"].shape == (2, 3136, 64)
    close(attention1["value"][:, :256], ref["eval/t2t_attention1_out_first256"])
    close(t2t_tokens["value"], ref["eval/t2t_tokens"])
    close(tokens["value"][:, 0], ref["eval/cls_feature"])
    close(out, ref["eval/out"])


def test_fresh_sinusoid_is_the_official_table(case, ref):
    pos_embed = build(case).backbone.pos_embed
    assert pos_embed.stop_gradient
    np.testing.assert_array_equal(pos_embed.numpy(), ref["sd/pos_embed"])


def test_performer_features_are_loaded_not_resampled():
    case = "t2t_vit_7_d2"
    ref = load_npz(f"{case}.npz")
    drawn = [build(case, seed).backbone.tokens_to_token.attention1.w.numpy() for seed in (1, 2)]
    assert not np.allclose(drawn[0], drawn[1])
    np.testing.assert_allclose(drawn[0] @ drawn[0].T, 32 * np.eye(32), atol=1e-4)  # orthogonal rows, norm √32
    outputs = []
    for seed in (1, 2):
        model = fresh_model(case, seed)
        for name in PERFORMER_W:
            official = name[len("backbone."):]
            np.testing.assert_array_equal(model.state_dict()[name].numpy(), ref[f"sd/{official}"])
        with paddle.no_grad():
            outputs.append(model(paddle.to_tensor(ref["x"])).numpy())
    np.testing.assert_array_equal(outputs[0], outputs[1])
    close(outputs[0], ref["eval/out"])


@pytest.mark.parametrize("key", ["t2t_vit_7@224", "t2t_vit_10@224", "t2t_vit_12@224", "t2t_vit_14@224",
                                 "t2t_vit_14@384", "t2t_vit_19@224", "t2t_vit_24@224", "t2t_vit_t_14@224",
                                 "t2t_vit_t_19@224", "t2t_vit_t_24@224", "t2t_vit_14_resnext@224",
                                 "t2t_vit_14_wide@224"])
def test_parameter_counts(key):
    fn, img = key.split("@")
    with open(fixture_path("params.json")) as f:
        expected = json.load(f)["t2t"][key]
    model = create_model(fn, img_size=int(img))
    params = dict(model.named_parameters())
    frozen = sorted(name[len("backbone."):] for name, p in params.items() if p.stop_gradient)
    assert sum(int(np.prod(p.shape)) for p in params.values()) == expected["params_total"]
    assert sum(int(np.prod(p.shape)) for p in params.values() if not p.stop_gradient) == expected["params_trainable"]
    assert frozen == sorted(expected["frozen_param_names"])
    assert len(model.state_dict()) == expected["state_dict_tensors"]


def test_frozen_parameters_are_neither_trained_nor_decayed():
    model = create_model("t2t_vit_7", depth=1, num_classes=10)
    frozen = {"backbone.pos_embed", *PERFORMER_W}
    assert model.no_weight_decay() == {"backbone.cls_token", *frozen}
    params = dict(model.named_parameters())
    assert all(params[name].stop_gradient for name in frozen)  # so AdamW leaves them out
    assert not {params[name].name for name in frozen} & decay_parameter_names(model)


def test_other_image_size_changes_grid_and_table():
    model = create_model("t2t_vit_7", depth=1, num_classes=3, img_size=384)
    assert model.grid_size == (24, 24)
    table = model.backbone.pos_embed.numpy()
    assert table.shape == (1, 577, 256)
    close(table[0, 576, 0::2], np.sin(576 / 10000.0 ** (np.arange(0, 256, 2) / 256)), atol=1e-6)
    model.eval()
    assert model(paddle.randn([1, 3, 384, 384])).shape == [1, 3]
    with pytest.raises(ValueError, match="built for"):
        model(paddle.randn([1, 3, 224, 224]))
    assert create_model("t2t_vit_7", depth=1, img_size=(224, 320)).grid_size == (14, 20)


def test_official_checkpoint_at_another_size():
    """As the official transfer learning: the stored table is resized, not rebuilt."""
    model = create_model("t2t_vit_7", depth=2, num_classes=10, img_size=384)
    report = load_weights(model, fixture_path("t2t_vit_7_d2.pth"))
    assert "resized backbone.pos_embed from 14x14 to 24x24" in report
    assert model.backbone.pos_embed.stop_gradient
    close(model.backbone.pos_embed.numpy()[:, :1], load_npz("t2t_vit_7_d2.npz")["sd/pos_embed"][:, :1], atol=0)


def test_mixtoken_swaps_exactly_the_t2t_tokens_of_the_box():
    paddle.seed(0)
    backbone = create_model("t2t_vit_7", depth=1, num_classes=10).backbone
    backbone.eval()  # the performer's fixed dropout off: two forwards are comparable
    images, box = paddle.randn([3, 3, 224, 224]), (2, 6, 9, 13)  # rows 2:9, cols 6:13
    t2t, h1 = capture(backbone.tokens_to_token)
    block_in, h2 = capture(backbone.blocks[0], pre=True)
    backbone(images, box)
    h1.remove(), h2.remove()
    grid = t2t["value"].reshape(3, 14, 14, 256)
    mixed = grid.copy()
    mixed[:, 2:9, 6:13] = grid[::-1, 2:9, 6:13]  # sample i takes sample 2 - i's tokens inside the box
    cls = np.broadcast_to(backbone.cls_token.numpy(), (3, 1, 256))
    expected = np.concatenate([cls, mixed.reshape(3, 196, 256)], axis=1) + backbone.pos_embed.numpy()
    close(block_in["value"], expected, atol=1e-6)
    assert not np.allclose(mixed[0], grid[0])
    with paddle.no_grad():
        unmixed = backbone(images).numpy()
        assert not np.allclose(backbone(images, box).numpy(), unmixed, atol=1e-3)
        close(backbone(images, (4, 4, 4, 9)).numpy(), unmixed, atol=0)  # an empty box mixes nothing


@pytest.mark.parametrize("config", ["preset", "classifier"])
def test_token_labeling_with_mixtoken_trains_a_step(config):
    paddle.seed(0)
    head = {"name": "TokenLabelHead", "num_classes": 10}
    model = (create_model("t2t_vit_14", head=head, depth=1) if config == "preset" else build_model({
        "name": "Classifier", "head": head,
        "backbone": {"name": "T2TViT", "embed_dim": 384, "depth": 1, "num_heads": 6, "mlp_ratio": 3.0}}))
    assert model.grid_size == (14, 14)
    model.train()
    images, box = paddle.randn([2, 3, 224, 224]), (3, 5, 10, 12)
    tokens, handle = capture(model.backbone)
    outputs = model(images, box)
    handle.remove()
    assert outputs["cls"].shape == [2, 10] and outputs["aux"].shape == [2, 196, 10]
    # the head swaps the box of the dense logits back: token t of sample i is sample i's own token
    aux = model.head.aux_head(paddle.to_tensor(tokens["value"][:, 1:])).reshape([2, 14, 14, 10])
    close(outputs["aux"].numpy(), flip_box(aux, box, row_axis=1).reshape([2, 196, 10]).numpy())
    target = paddle.nn.functional.softmax(paddle.randn([2, 10, 2 + 196]), axis=1)
    loss = model.loss(outputs, Batch(images, target))
    optimizer = AdamW(model, lr=1e-3)
    before = {name: p.numpy() for name, p in model.named_parameters()}
    loss.backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert np.isfinite(float(loss))
    for name in ("backbone.pos_embed", *PERFORMER_W):
        assert after[name].grad is None
        np.testing.assert_array_equal(after[name].numpy(), before[name])
    for name in ("backbone.cls_token", "backbone.tokens_to_token.attention1.kqv.weight", "head.aux_head.weight"):
        assert not np.array_equal(after[name].numpy(), before[name])
