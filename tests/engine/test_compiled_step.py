"""The compiled training step (``compile: true``) against the eager one, family by family: the same loss and
training outputs, the same BatchNorm running statistics and the same gradients, over steps with different
MixToken boxes (one empty) and drop-path draws. (The trajectory test runs the official recipe compiled too.)"""
import numpy as np
import paddle
import pytest

from passl_tl.batch.pipeline import Batch
from passl_tl.engine.step_forward import COMPILED_STEP_FLAGS, build_step_forward, run_step_forward
from passl_tl.models import create_model

TOKEN_LABELS = dict(head={"name": "TokenLabelHead"})
# family -> (preset, overrides, image side): reduced architectures, every family's MixToken path and drop path
FAMILIES = {
    "lvvit": ("lvvit_tiny", dict(depth=2, drop_path_rate=0.3), 224),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(depth=2, drop_path_rate=0.3), 224),
    "deit_token_label": ("deit_tiny_patch16_224", dict(depth=2, drop_path_rate=0.3, **TOKEN_LABELS), 224),
    "t2t_vit": ("t2t_vit_7", dict(depth=2, drop_path_rate=0.3, **TOKEN_LABELS), 224),
    "volo": ("volo_d1", dict(layers=[1] * 4, embed_dims=[64, 128, 128, 128], num_heads=[2, 4, 4, 4],
                             drop_path_rate=0.3, img_size=160), 160),  # MixToken on the 2x finer outlooker map
    "regnet": ("regnety_002", dict(img_size=96, **TOKEN_LABELS), 96),  # BatchNorm everywhere; mixes the stem map
}
CLASSES = 7
# The trajectory test's tolerances: the compiled program may pick other kernels (T2T-ViT's differ by float
# rounding; LV-ViT's and DeiT's forward is bit-identical). Gradients relative to the largest: eager runs the loss's
# closed-form backward, compiled autograd's ops.
LOSS_ATOL, OUTPUTS_ATOL, GRAD_RTOL = 2e-6, 1e-5, 2e-5


def train_steps(preset, overrides, side, compiled):
    """Two steps' (loss, outputs) and the gradients summed over them, from the same weights and draws."""
    paddle.seed(0)
    model = create_model(preset, num_classes=CLASSES, **overrides)
    model.train()
    mixes_tokens = getattr(model.head, "mixes_tokens", False)
    step_forward = build_step_forward(model, None, compiled)
    rng = np.random.RandomState(1)
    results = []
    rows, cols = model.grid_size
    for step, box in enumerate([(1, 0, rows - 1, cols // 2), None] if mixes_tokens else [None, None]):
        images = paddle.to_tensor(rng.randn(3, 3, side, side).astype("float32"))
        if mixes_tokens:  # token-label targets [B, K, 2 + N]
            targets = paddle.nn.functional.softmax(paddle.to_tensor(rng.randn(3, CLASSES, 2 + rows * cols)), axis=1)
            teacher = None
        else:  # soft targets and a teacher's logits (distillation)
            targets = paddle.nn.functional.softmax(paddle.to_tensor(rng.randn(3, CLASSES)), axis=1)
            teacher = paddle.to_tensor(rng.randn(3, CLASSES).astype("float32"))
        paddle.seed(10 + step)  # the drop-path masks
        loss, outputs = run_step_forward(step_forward, Batch(images, targets.astype("float32"), teacher, box),
                                         compiled, mixes_tokens)
        loss.backward()
        tensors = outputs.values() if isinstance(outputs, dict) else [outputs]
        results.append((float(loss), [t.numpy() for t in tensors if isinstance(t, paddle.Tensor) and t.ndim > 1]))
    buffers = {name: b.numpy() for name, b in model.named_buffers()}
    grads = {name: p.grad.numpy() for name, p in model.named_parameters() if p.grad is not None}
    return results, buffers, grads


@pytest.mark.parametrize("family", list(FAMILIES))
def test_compiled_step_equals_the_eager_step(family):
    eager_steps, eager_buffers, eager_grads = train_steps(*FAMILIES[family], compiled=False)
    compiled_steps, compiled_buffers, compiled_grads = train_steps(*FAMILIES[family], compiled=True)
    for (eager_loss, eager_out), (compiled_loss, compiled_out) in zip(eager_steps, compiled_steps):
        assert compiled_loss == pytest.approx(eager_loss, rel=0, abs=LOSS_ATOL)
        assert len(compiled_out) == len(eager_out) > 0
        for ours, expected in zip(compiled_out, eager_out):
            np.testing.assert_allclose(ours, expected, rtol=0, atol=OUTPUTS_ATOL)
    assert compiled_buffers.keys() == eager_buffers.keys()
    for name in eager_buffers:  # BatchNorm running statistics (PyTorch's unbiased running variance)
        np.testing.assert_allclose(compiled_buffers[name], eager_buffers[name], rtol=1e-6, atol=0, err_msg=name)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        np.testing.assert_allclose(compiled_grads[name], grad, rtol=0, atol=GRAD_RTOL * np.abs(grad).max(),
                                   err_msg=name)


def test_compiled_step_flags_are_restored():
    before = paddle.get_flags(list(COMPILED_STEP_FLAGS))
    model = create_model("lvvit_tiny", depth=1, num_classes=CLASSES)
    model.train()
    images = paddle.randn([2, 3, 224, 224])
    run_step_forward(build_step_forward(model, None, True), Batch(images, paddle.full([2, CLASSES], 1 / CLASSES)),
                     True, False)
    assert paddle.get_flags(list(COMPILED_STEP_FLAGS)) == before


class HostSideStudent(paddle.nn.Layer):
    """A student whose forward reads tensor values in Python: it cannot be traced."""

    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(4, 3)

    def forward(self, x, mix_box=None):
        if max(max(row) for row in x.tolist()) > 100:
            x = x / 100
        return self.fc(x)

    def loss(self, outputs, batch):
        return ((outputs - batch.targets) ** 2).mean()


def test_a_model_that_cannot_be_traced_fails_at_the_first_step_naming_its_line():
    step_forward = build_step_forward(HostSideStudent(), None, True)
    with pytest.raises(Exception, match=r"(?s)In transformed code.*x\.tolist\(\)"):
        run_step_forward(step_forward, Batch(paddle.randn([2, 4]), paddle.randn([2, 3])), True, False)
