"""The oneDNN eval forward (Paddle Inference on the CPU): the official logits of every family, the
resolution of ``eval_backend``, dynamic batch and image sizes, and no effect on later training."""
import numpy as np
import paddle
import pytest

from passl_tl.engine import evaluate
from passl_tl.engine.eval_forward import OneDNNForward, eval_forward, resolve_eval_backend
from passl_tl.models import create_model, load_weights
from passl_tl.utils.inference import TracedForwards
from passl_tl.utils.registry import ConfigError

from tests.conftest import fixture_path, load_npz

# fixture case -> (preset, overrides): the official checkpoints of each family
FAMILIES = {
    "lvvit_t_d2": ("lvvit_tiny", dict(depth=2, num_classes=10)),
    "lvvit_lstem_d1": ("lvvit_tiny", dict(embed_dim=192, depth=1, num_heads=4, stem_channels=128, skip_lam=3.0,
                                          num_classes=10)),
    "deit_tiny_distilled_d2": ("deit_tiny_distilled_patch16_224", dict(depth=2, num_classes=10)),
    "t2t_vit_7_d2": ("t2t_vit_7", dict(depth=2, num_classes=10)),
    "t2t_vit_t14_d1": ("t2t_vit_t_14", dict(depth=1, num_classes=10)),
    "regnety_002_c10": ("regnety_002", dict(num_classes=10)),
    "volo_mini_img224": ("volo_d1", dict(layers=[1] * 4, embed_dims=[64, 128, 128, 128], num_heads=[2, 4, 4, 4],
                                         num_classes=10)),
    "volo_mini_img192": ("volo_d1", dict(layers=[1] * 4, embed_dims=[64, 128, 128, 128], num_heads=[2, 4, 4, 4],
                                         img_size=192, num_classes=10)),
}


@pytest.mark.parametrize("case", list(FAMILIES))
def test_onednn_forward_gives_the_official_logits(case):
    """Same tolerance as the dygraph parity tests: oneDNN's other summation order stays within 1e-5."""
    ref = load_npz(f"{case}.npz")
    preset, overrides = FAMILIES[case]
    model = create_model(preset, **overrides)
    load_weights(model, fixture_path(f"{case}.pth"))
    model.train()
    logits = OneDNNForward(model)(paddle.to_tensor(ref["x"])).numpy()
    np.testing.assert_allclose(logits, ref["eval/out"], rtol=0, atol=1e-5)
    assert model.training  # the mode the model was in is kept


@pytest.mark.slow
def test_onednn_forward_any_batch_and_image_size():
    """One program per image size (a convnet takes any); any batch size."""
    paddle.seed(0)
    model = create_model("regnety_002", num_classes=7)
    model.eval()
    forward = OneDNNForward(model)
    for shape in ([3, 3, 64, 64], [5, 3, 64, 64], [2, 3, 96, 96]):
        images = paddle.randn(shape)
        with paddle.no_grad():
            expected = model(images).numpy()
        np.testing.assert_allclose(forward(images).numpy(), expected, rtol=0, atol=1e-5)


def test_resolve_eval_backend():
    assert resolve_eval_backend("auto", amp=False) == "onednn"  # on this CPU build
    assert resolve_eval_backend("auto", amp=True) == "dygraph"
    assert resolve_eval_backend("dygraph", amp=False) == "dygraph"
    with pytest.raises(ConfigError, match="eval_backend must be one of auto, dygraph, onednn, got 'fast'"):
        resolve_eval_backend("fast", amp=False)
    with pytest.raises(ConfigError, match="runs fp32"):
        resolve_eval_backend("onednn", amp=True)
    model = create_model("lvvit_tiny", depth=1, num_classes=7, img_size=64)
    assert isinstance(eval_forward(model, "auto"), OneDNNForward)
    assert not isinstance(eval_forward(model, "dygraph"), OneDNNForward)


def test_evaluate_both_backends_agree():
    paddle.seed(1)
    model = create_model("lvvit_tiny", depth=1, num_classes=7, img_size=64)
    images = paddle.randn([6, 3, 64, 64])
    with paddle.no_grad():
        model.eval()
        labels = paddle.argmax(model(images), axis=1)  # every image right: top-1 is 100 on both backends
    loader = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    for backend in ("dygraph", "onednn"):
        metrics = evaluate(model, loader, backend=backend)
        assert (metrics["top1"], metrics["top5"], metrics["count"]) == (100.0, 100.0, 6)
        assert metrics["img_per_s"] > 0


def test_onednn_run_leaves_training_numerics_unchanged():
    """A predictor run resets the math library's threads; training after it must be bit-identical, after an
    evaluation that traced the model and after one that reused its program."""
    paddle.seed(2)
    model = create_model("lvvit_tiny", depth=1, num_classes=7, img_size=64)
    images = paddle.randn([2, 3, 64, 64])

    def gradients():
        model.train()
        model.clear_gradients()
        outputs = model(images)
        (outputs["cls"].sum() + outputs["aux"].sum()).backward()
        return [p.grad.numpy().copy() for p in model.parameters() if p.grad is not None]

    before = gradients()
    traced = TracedForwards()
    for _ in range(2):
        with paddle.no_grad():
            OneDNNForward(model, traced)(images)
        for a, b in zip(before, gradients()):
            np.testing.assert_array_equal(a, b)
