"""VOLO against the official PyTorch outputs recorded in the reference fixtures (sail-sg/volo).

Each case's model is ``create_model("volo_d1", **official constructor arguments)`` (from the fixture's
``meta``, so held-out shapes need nothing here) with the ``.pth`` loaded through ``load_weights``.
Tolerances follow the fixture README: logits, tokens and losses atol 1e-5; BatchNorm running stats
atol 1e-6; gradients rtol 1e-4 of their max, except the first stem conv and BatchNorm (``patch_embed.conv.0/1``,
through three train-mode BatchNorms) at 5e-3, the reference's own float32 error there; pos_embed resize atol 1e-6.
"""
import json
import math

import numpy as np
import paddle
import pytest

from passl_tl.batch.pipeline import Batch
from passl_tl.models import create_model, load_weights
from passl_tl.models.heads import TokenLabelHead
from passl_tl.models import preset_inference
from passl_tl.models.weights import linear_weight_names
from passl_tl.token_labels.mixtoken import sample_mix_box
from passl_tl.utils.registry import ConfigError

from tests.conftest import assert_batchnorm_state, capture, close, fixture_path, recorded_train_step

# Official switches whose job is done elsewhere here: the head (return_dense: TokenLabelHead) and the batch
# pipeline (mix_token: the MixToken stage); return_mean (no cls token) is not offered.
OFFICIAL_ONLY = {"mix_token": True, "return_dense": True, "return_mean": False}
HEAD_PARAMS = {"head.weight": "head.cls_head.weight", "head.bias": "head.cls_head.bias",
               "aux_head.weight": "head.aux_head.weight", "aux_head.bias": "head.aux_head.bias"}


@pytest.fixture(scope="module", params=["volo_mini_img224", "volo_mini_img192"])
def case(request):
    return request.param


@pytest.fixture(scope="module")
def meta(ref):
    return json.loads(str(ref["meta"]))


def official_overrides(meta):
    kwargs = dict(meta["constructor_kwargs"])
    for key, value in OFFICIAL_ONLY.items():
        assert kwargs.pop(key) == value
    return kwargs


def fresh_model(case, meta, dtype="float32", **head_options):
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        model = create_model("volo_d1", **official_overrides(meta), **head_options)
    finally:
        paddle.set_default_dtype(previous)
    load_weights(model, fixture_path(f"{case}.pth"))
    return model


def box_of(ref, group):
    return tuple(int(v) for v in ref[f"{group}/bbox"])


def nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def test_grids_follow_the_image_size(case, meta):
    model = fresh_model(case, meta)
    size = meta["img_size"]
    assert model.grid_size == (size // 16, size // 16) == (meta["token_grid"],) * 2
    assert list(model.backbone.pos_embed.shape) == [1, size // 16, size // 16, model.backbone.embed_dim]


def test_eval_outputs(case, ref, meta):
    model = fresh_model(case, meta)
    model.eval()
    stem, h1 = capture(model.backbone.patch_embed)
    outlooker, h2 = capture(model.backbone.network[0])
    tokens, h3 = capture(model.backbone)
    with paddle.no_grad():
        out = model(paddle.to_tensor(ref["x"])).numpy()
    for handle in (h1, h2, h3):
        handle.remove()
    close(out, ref["eval/out"])
    close(nhwc(stem["value"]), ref["eval/stem"])
    close(outlooker["value"], ref["eval/outlooker_out"])
    close(tokens["value"], ref["eval/tokens"])
    feats = paddle.to_tensor(tokens["value"])
    close(model.head.cls_head(feats[:, 0]).numpy(), ref["eval/x_cls"])
    close(model.head.aux_head(feats[:, 1:]).numpy(), ref["eval/x_aux"])


def test_mixtoken_draws_the_official_boxes_on_the_token_grid(case, ref, meta):
    """The MixToken stage's draw from a RandomState seeded like the official global RNG gives the recorded box,
    on the token grid (not the 2x finer outlooker grid it is applied to)."""
    grid = fresh_model(case, meta).grid_size
    for group in ("train", "train_emptybox"):
        rng = np.random.RandomState(int(ref[f"{group}/mix_seed"]))
        assert sample_mix_box(rng, grid) == box_of(ref, group)
        rng = np.random.RandomState(int(ref[f"{group}/mix_seed"]))
        assert rng.beta(1.0, 1.0) == float(ref[f"{group}/lam_beta"])
    assert [2 * v for v in box_of(ref, "train")] == meta["bbox_outlooker_grid"]


@pytest.fixture(scope="module")
def train_run(case, ref, meta):
    """The recorded train step, with ``train/loss``'s dense_weight 1."""
    model = fresh_model(case, meta, dense_weight=1.0)
    return recorded_train_step(model, ref, model.backbone.network[0])


def test_train_forward(ref, train_run):
    close(nhwc(train_run["stem"]), ref["train/stem"])
    close(train_run["tokens_in"], ref["train/tokens_in"])  # the mixed stem: the box x2 on the outlooker grid
    close(train_run["outputs"]["cls"].numpy(), ref["train/x_cls"])
    close(train_run["outputs"]["aux"].numpy(), ref["train/x_aux"])  # un-mixed on the token grid


@pytest.mark.parametrize("key, options", [
    ("train/loss", dict(dense_weight=1.0)),
    ("train/loss_cls_only", dict(dense_weight=0.0)),
    ("train/loss_dense_only", dict(cls_weight=0.0, dense_weight=1.0)),
    ("train/loss_dense_weight_0.5", dict(dense_weight=0.5)),
    ("train/loss_ground_truth", dict(ground_truth=True, dense_weight=1.0)),
    ("train/loss_ground_truth_dense_weight_0.5", dict(ground_truth=True, dense_weight=0.5)),
])
def test_train_loss_variants(ref, train_run, key, options):
    """VOLO's TokenLabelCrossEntropy and TokenLabelGTCrossEntropy are TokenLabelHead's loss with ground_truth
    off and on; λ = 1 − box area / N on the token grid."""
    head = TokenLabelHead(8, 10, **options)
    outputs = {k: v.detach() if k != "mix_box" else v for k, v in train_run["outputs"].items()}
    assert outputs["mix_box"] == train_run["box"]
    close(float(head.loss(outputs, paddle.to_tensor(ref["train/target"]))), float(ref[key]))


def test_preset_loss_is_volos_default(ref, meta, train_run):
    """The presets carry VOLO's main.py default --dense-weight 0.5 --cls-weight 1.0."""
    head = create_model("volo_d1", **official_overrides(meta)).head
    assert (head.dense_weight, head.cls_weight, head.ground_truth) == (0.5, 1.0, False)
    outputs = {k: v.detach() if k != "mix_box" else v for k, v in train_run["outputs"].items()}
    close(float(head.loss(outputs, paddle.to_tensor(ref["train/target"]))), float(ref["train/loss_dense_weight_0.5"]))
    close(train_run["loss"], float(ref["train/loss"]))


def test_gradients(ref, train_run):
    names = [k[len("grad/"):] for k in ref if k.startswith("grad/")]
    assert len(names) == 29
    linear = linear_weight_names(train_run["model"])
    for name in names:
        ours = HEAD_PARAMS.get(name, f"backbone.{name}")
        grad = train_run["grads"][ours]
        grad = grad.T if ours in linear else grad  # Paddle Linear weight is [in, out]
        expected = ref[f"grad/{name}"]
        rtol = 5e-3 if name.startswith(("patch_embed.conv.0.", "patch_embed.conv.1.")) else 1e-4
        np.testing.assert_allclose(grad, expected, rtol=rtol, atol=rtol * np.abs(expected).max(), err_msg=name)


def test_batchnorm_state_after_train_forward(ref, train_run):
    assert_batchnorm_state(ref, train_run["model"])


def test_train_empty_box(case, ref, meta):
    box = box_of(ref, "train_emptybox")
    assert box[0] == box[2] and box[1] == box[3]
    model = fresh_model(case, meta)
    model.train()
    outputs = model(paddle.to_tensor(ref["x"]), box)
    close(outputs["cls"].numpy(), ref["train_emptybox/x_cls"])
    close(outputs["aux"].numpy(), ref["train_emptybox/x_aux"])
    batch = Batch(paddle.to_tensor(ref["x"]), paddle.to_tensor(ref["train/target"]))
    head = TokenLabelHead(8, 10, dense_weight=1.0)
    close(float(head.loss(outputs, batch.targets)), float(ref["train_emptybox/loss"]))
    close(float(head.loss({**outputs, "mix_box": None}, batch.targets)), float(ref["train_emptybox/loss"]))


def test_float64_runs_match_the_official_float64_runs(case, ref, meta):
    """In float64 both implementations are exact to ~1e-12; 1e-9 leaves room for summation order."""
    model = fresh_model(case, meta, dtype="float64")
    x = paddle.to_tensor(ref["x"].astype(np.float64))
    model.eval()
    with paddle.no_grad():
        close(model(x).numpy(), ref["eval/out_f64"], atol=1e-9)
    model.train()
    outputs = model(x, box_of(ref, "train"))
    close(outputs["cls"].numpy(), ref["train/x_cls_f64"], atol=1e-9)
    close(outputs["aux"].numpy(), ref["train/x_aux_f64"], atol=1e-9)
    head = TokenLabelHead(8, 10, dense_weight=1.0)
    close(float(head.loss(outputs, paddle.to_tensor(ref["train/target"].astype(np.float64)))),
          float(ref["train/loss_f64"]), atol=1e-9)


def test_pos_embed_resized_like_the_official_fine_tuning(meta):
    """A 224 checkpoint loaded at 384: the [1, 14, 14, C] grid resized bicubically to [1, 24, 24, C] as
    VOLO's resize_pos_embed_4d does."""
    ref = dict(np.load(fixture_path("volo_mini_img224.npz")))
    model = create_model("volo_d1", **{**official_overrides(meta), "img_size": 384})
    report = load_weights(model, fixture_path("volo_mini_img224.pth"))
    assert "resized backbone.pos_embed from 14x14 to 24x24" in report
    close(model.backbone.pos_embed.numpy(), ref["pos_resize/24x24"], atol=1e-6)


# Presets vs the official registered functions (params.json), full size with 1000 classes.
PARAM_CASES = ["volo_d1@224", "volo_d1@384"]
SLOW_PARAM_CASES = ["volo_d2@224", "volo_d2@384", "volo_d3@224", "volo_d3@448", "volo_d4@224", "volo_d4@448",
                    "volo_d5@224", "volo_d5@448", "volo_d5@512"]


@pytest.mark.parametrize("key", PARAM_CASES + [pytest.param(c, marks=pytest.mark.slow) for c in SLOW_PARAM_CASES])
def test_parameter_counts_match_official(key):
    with open(fixture_path("params.json")) as f:
        official = json.load(f)["volo"][key]
    preset, size = key.split("@")
    with paddle.LazyGuard():
        model = create_model(preset, img_size=int(size))
    state = model.state_dict()
    bn_stats = [k for k in state if k.endswith(("._mean", "._variance"))]
    params = [p for n, p in model.named_parameters() if n not in bn_stats]
    assert sum(math.prod(p.shape) for p in params) == official["params_total"]
    assert sum(math.prod(p.shape) for n, p in model.named_parameters() if n.startswith("head.aux_head.")) == \
        official["aux_head_params"]
    assert list(model.backbone.pos_embed.shape) == official["pos_embed_shape"]
    assert all(not p.stop_gradient for p in params)
    # buffers: BatchNorm running stats plus one num_batches_tracked per BN (no Paddle counterpart)
    assert sum(math.prod(state[k].shape) for k in bn_stats) == official["buffers_numel"] - len(bn_stats) // 2
    assert len(state) == official["state_dict_tensors"] - len(bn_stats) // 2


def official_shapes(model):
    """``model``'s state dict as the official VOLO names it, shapes only (broadcast views: no memory)."""
    linear = linear_weight_names(model)
    heads = {"head.cls_head.": "head.", "head.aux_head.": "aux_head."}
    state = {}
    for ours, value in model.state_dict().items():
        prefix = next((p for p in heads if ours.startswith(p)), None)
        theirs = heads[prefix] + ours[len(prefix):] if prefix else ours[len("backbone."):]
        theirs = theirs.replace("._mean", ".running_mean").replace("._variance", ".running_var")
        shape = list(value.shape)[::-1] if ours in linear else list(value.shape)
        state[theirs] = np.broadcast_to(np.float32(0), shape)
    return state


@pytest.mark.parametrize("key", ["volo_d1@384", "volo_d2@224", "volo_d3@448", "volo_d4@224", "volo_d5@512"])
def test_released_checkpoints_name_their_preset_and_resolution(key):
    """An official release (or timm's copy: same names) names its preset and image size by its shapes:
    D3 and D4 differ only in width, D1/D2 and D5 in depth, mlp ratio and stem; pos_embed gives the size."""
    preset, size = key.split("@")
    with paddle.LazyGuard():
        state = official_shapes(create_model(preset, img_size=int(size)))
    assert preset_inference.choose_preset(state, {}, "release.pth.tar") == preset
    assert preset_inference.preset_arguments(preset, state, {}) == {"img_size": int(size), "num_classes": 1000}


def test_reduced_checkpoint_needs_model_and_names_what_it_shows(meta):
    state = dict(np.load(fixture_path("volo_mini_img224.npz")))
    state = {k[len("sd/"):]: v for k, v in state.items() if k.startswith("sd/")}
    with pytest.raises(ConfigError, match=r"pos_embed grid \[14, 14\], head 10 classes\) matches no registered preset"):
        preset_inference.choose_preset(state, {}, "volo_mini_img224.pth")
    overrides = {k: v for k, v in official_overrides(meta).items() if k != "img_size"}
    assert "volo_d1" in preset_inference.matching_presets(state, overrides)


def test_another_class_count_resets_both_heads(case, meta):
    """Fine-tuning on other classes: with skip_mismatched_head both the cls and the aux head start from the
    model's own init (the official reset_classifier raises AttributeError and would never reset aux_head)."""
    model = create_model("volo_d1", **{**official_overrides(meta), "num_classes": 5})
    fresh = {k: v.numpy() for k, v in model.state_dict().items()}
    report = load_weights(model, fixture_path(f"{case}.pth"), skip_mismatched_head=True)
    assert "head.cls_head.weight" in report and "head.aux_head.weight" in report
    state = model.state_dict()
    for key in ("head.cls_head.weight", "head.cls_head.bias", "head.aux_head.weight", "head.aux_head.bias"):
        np.testing.assert_array_equal(state[key].numpy(), fresh[key])
    ref = dict(np.load(fixture_path(f"{case}.npz")))
    np.testing.assert_array_equal(state["backbone.cls_token"].numpy(), ref["sd/cls_token"])


def test_stochastic_depth_schedule_is_the_official_one(meta):
    """With drop_path_rate 0.1 the transformer blocks get the official linear rates over all blocks; the
    outlookers none (official: their builder is not passed the rate) unless outlooker_drop_path; the
    class-attention blocks never."""
    official = meta["official_quirks"]["drop_path_rate_0.1"]
    overrides = {**official_overrides(meta), "drop_path_rate": 0.1}
    network = create_model("volo_d1", **overrides).backbone.network

    def rates(stage):
        return [block.drop_path.drop_prob for block in stage]

    assert rates(network[0]) == [0.0] * len(official["outlooker"])
    transformer = [rate for stage in network[2:] for rate in rates(stage)]
    np.testing.assert_allclose(transformer, official["transformer"], rtol=1e-12)
    assert rates(create_model("volo_d1", **overrides, outlooker_drop_path=True).backbone.network[0]) == [0.0]
    deeper = create_model("volo_d1", **{**overrides, "layers": [2, 1, 1, 1]}, outlooker_drop_path=True)
    np.testing.assert_allclose(rates(deeper.backbone.network[0]), [0.0, 0.025], rtol=1e-12)
