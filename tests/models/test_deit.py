"""DeiT against the official PyTorch outputs recorded in the reference fixtures, parameter counts,
and token labeling (MixToken) on a DeiT backbone.

Tolerances follow the fixture README: logits/features/losses atol 1e-5, gradients rtol 1e-4
relative to each gradient's scale.
"""
import json

import numpy as np
import paddle
import pytest

from passl_tl.batch.mixup import paste_box
from passl_tl.batch.pipeline import Batch
from passl_tl.models import create_model, load_weights
from passl_tl.models.weights import official_key_map
from passl_tl.token_labels.mixtoken import flip_box
from passl_tl.utils.registry import ConfigError

from tests.conftest import close, fixture_path, load_npz

# Fixture case -> the preset it was built from (with depth 2 and 10 classes, as the README says).
CASES = {"deit_tiny_distilled_d2": "deit_tiny_distilled_patch16_224", "deit_tiny_d2": "deit_tiny_patch16_224"}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    return request.param



def fresh_model(case):
    model = create_model(CASES[case], depth=2, num_classes=10)
    load_weights(model, fixture_path(f"{case}.pth"))
    return model




def test_eval_output(case, ref):
    model = fresh_model(case)
    model.eval()
    with paddle.no_grad():
        close(model(paddle.to_tensor(ref["x"])).numpy(), ref["eval/out"])


@pytest.fixture(scope="module")
def train_run(case, ref):
    """Train-mode forward, the README recipe loss (distilled: hard, alpha 0.5; plain: none), one backward."""
    model = fresh_model(case)
    model.train()
    seen = {}
    handle = model.backbone.register_forward_post_hook(lambda layer, inputs, out: seen.update(tokens=out.numpy()))
    outputs = model(paddle.to_tensor(ref["x"]))
    handle.remove()
    teacher = paddle.to_tensor(ref["loss/teacher_logits"]) if isinstance(outputs, dict) else None
    loss = model.loss(outputs, Batch(paddle.to_tensor(ref["x"]), paddle.to_tensor(ref["loss/soft_target"]),
                                     teacher_logits=teacher))
    loss.backward()
    return dict(model=model, outputs=outputs, tokens=seen["tokens"], loss=float(loss),
                grads={n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None})


def test_train_forward(case, ref, train_run):
    outputs, tokens = train_run["outputs"], train_run["tokens"]
    assert tokens.shape == (2, train_run["model"].backbone.num_prefix_tokens + 196, 192)
    if case == "deit_tiny_distilled_d2":
        close(outputs["cls"].numpy(), ref["train/x_cls"])
        close(outputs["dist"].numpy(), ref["train/x_dist"])
        close(tokens[:, 0], ref["train/feat_cls_token"])
        close(tokens[:, 1], ref["train/feat_dist_token"])
    else:
        close(outputs.numpy(), ref["train/x_cls"])


def test_gradients(ref, train_run):
    close(train_run["loss"], float(ref["grad/loss"]))
    names = [k[len("grad/"):] for k in ref if k.startswith("grad/") and k != "grad/loss"]
    assert len(names) == (7 if "sd/dist_token" in ref else 5)
    model = train_run["model"]
    ours = official_key_map(names, model)
    for name in names:
        grad = train_run["grads"][ours[name]]
        if name.endswith(("head.weight", "head_dist.weight")):
            grad = grad.T  # Paddle Linear weight is [in, out]
        expected = ref[f"grad/{name}"]
        # fixture README: gradients rtol 1e-4, taken relative to each gradient's scale (near-zero entries)
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(), err_msg=name)


def _check_counts(preset):
    with paddle.LazyGuard():  # shapes only: the full-size models need no weights for counting
        model = create_model(preset)
    with open(fixture_path("params.json")) as f:
        expected = json.load(f)["deit"][preset]
    assert sum(int(np.prod(p.shape)) for p in model.parameters()) == expected["params_total"]
    assert len(model.state_dict()) == expected["state_dict_tensors"]


@pytest.mark.parametrize("preset", ["deit_tiny_patch16_224", "deit_small_patch16_224",
                                    "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224"])
def test_parameter_counts(preset):
    _check_counts(preset)


@pytest.mark.parametrize("preset", ["deit_base_patch16_224", "deit_base_patch16_384",
                                    "deit_base_distilled_patch16_224", "deit_base_distilled_patch16_384"])
def test_parameter_counts_base(preset):
    _check_counts(preset)


def test_any_image_size_and_grid():
    model = create_model("deit_tiny_distilled_patch16_224", depth=1, img_size=(64, 96), num_classes=3)
    assert model.grid_size == (4, 6) and model.backbone.num_prefix_tokens == 2
    assert model.backbone.pos_embed.shape == [1, 2 + 24, 192]
    model.eval()
    assert model(paddle.randn([2, 3, 64, 96])).shape == [2, 3]
    with pytest.raises(ValueError, match="token grid"):
        model(paddle.randn([2, 3, 64, 64]))
    with pytest.raises(ConfigError, match="patch_size dividing img_size"):
        create_model("deit_tiny_patch16_224", img_size=100)


def test_distilled_checkpoint_at_another_size_keeps_both_prefix_positions():
    model = create_model("deit_tiny_distilled_patch16_224", depth=2, num_classes=10, img_size=384)
    report = load_weights(model, fixture_path("deit_tiny_distilled_d2.pth"))
    assert "resized backbone.pos_embed from 14x14 to 24x24" in report
    pos_embed = model.backbone.pos_embed.numpy()
    assert pos_embed.shape == (1, 2 + 24 * 24, 192)
    close(pos_embed[:, :2], load_npz("deit_tiny_distilled_d2.npz")["sd/pos_embed"][:, :2], atol=0)


def test_weight_decay_skips_as_official():
    # timm 0.3.2's list, which DeiT's distilled model does not extend: dist_token is decayed
    model = create_model("deit_tiny_distilled_patch16_224", depth=1)
    assert model.no_weight_decay() == {"backbone.pos_embed", "backbone.cls_token"}
    from passl_tl.engine.optimizers import decay_parameter_names
    assert model.backbone.dist_token.name in decay_parameter_names(model)
    assert model.backbone.cls_token.name not in decay_parameter_names(model)


def test_distillation_head_needs_the_distillation_token():
    model = create_model("deit_tiny_patch16_224", head={"name": "DistillationHead"}, depth=1, img_size=32)
    with pytest.raises(ConfigError, match="distillation token"):
        model(paddle.randn([2, 3, 32, 32]))


@pytest.mark.parametrize("preset, prefix", [("deit_small_patch16_224", 1), ("deit_small_distilled_patch16_224", 2)])
def test_token_labeling_with_mixtoken_on_deit(preset, prefix):
    """A MixToken box on the patch grid equals swapping those image patches (the patch embedding is
    per patch); the head's aux output comes back un-mixed."""
    paddle.seed(0)
    model = create_model(preset, head={"name": "TokenLabelHead", "dense_weight": 0.5}, depth=1, num_classes=10)
    assert model.grid_size == (14, 14) and model.backbone.num_prefix_tokens == prefix
    model.train()
    images, box = paddle.randn([2, 3, 224, 224]), (3, 5, 10, 12)  # rows 3:10, cols 5:12
    mixed = model(images, box)
    pixels = tuple(16 * v for v in (box[0], box[2], box[1], box[3]))  # (top, bottom, left, right)
    swapped = model(paste_box(images, pixels))
    close(mixed["cls"].numpy(), swapped["cls"].numpy())
    aux = swapped["aux"].reshape([2, 14, 14, 10])
    close(mixed["aux"].numpy(), flip_box(aux, box, row_axis=1).reshape([2, 196, 10]).numpy())
    assert not np.allclose(mixed["aux"].numpy(), swapped["aux"].numpy(), atol=1e-3)
    loss = model.loss(mixed, Batch(images, paddle.nn.functional.softmax(paddle.randn([2, 10]))))
    loss.backward()
    assert model.backbone.cls_token.grad is not None
    model.eval()
    assert model(images).shape == [2, 10]
